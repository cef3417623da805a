"""deploy/kubernetes: the kustomize base, rendered offline and scanned, and its ConfigMap.

``kubectl kustomize`` renders the base without a cluster; the result is checked for what an
operator relies on (probes, resources, an unprivileged read-only container, the config
and secret mounts the proxy expects), then ``checkov`` scans it and the Dockerfiles: no
failed check, and every skipped one carries its reason and is listed in the README.
The ConfigMap's reload is exercised the way the kubelet updates a mounted ConfigMap
(its AtomicWriter: files in a timestamped directory, reached through the ``..data``
symlink, which is swapped by a rename), against a real ``aggregator serve`` process.
References: https://kubernetes.io/docs/concepts/configuration/configmap/#mounted-configmaps-are-updated-automatically
and https://www.checkov.io/2.Basics/Suppressing%20and%20Skipping%20Policies.html
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from aggregator.config import parse_settings
from tests.support.serve import ServeProcess
from tests.support.upstreams import FakeCrm

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
SECRET_EXAMPLE = BASE / "secret.example.yaml"
SECRETS_DIR = "/run/secrets/aggregator"
DOCKERFILES = (
    ROOT / "Dockerfile",
    ROOT / "deploy" / "compose" / "standins" / "redis" / "Dockerfile",
    ROOT / "deploy" / "compose" / "standins" / "postgres" / "Dockerfile",
)
NAME = "groove-profile-aggregator"
# A closed port on 127.0.0.1: whatever checkov might try to fetch fails at once, here.
NOWHERE = "http://127.0.0.1:9"
RENDERED = "rendered.yaml"


def kubectl() -> str:
    """The kubectl binary, or a skip saying how to get it."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (.ci/run installs Debian's kubernetes-client)")
    return found


def checkov() -> str:
    """checkov, from $CHECKOV, .ci/run's own virtualenv, or the PATH; else a skip."""
    candidates = [os.environ.get("CHECKOV", ""), str(ROOT / ".ci-checkov-venv/bin/checkov")]
    for candidate in [*candidates, shutil.which("checkov") or ""]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("checkov is not installed (.ci/run installs it in .ci-checkov-venv)")


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """The base as ``kubectl kustomize`` renders it, offline."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(BASE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(rendered: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single resource of ``kind``."""
    found = [doc for doc in rendered if doc["kind"] == kind]
    assert len(found) == 1, [doc["kind"] for doc in rendered]
    return found[0]


def container(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment's only container."""
    containers = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def secret_files(directory: Path) -> dict[str, str]:
    """The example Secret's keys written as files into ``directory``, as Kubernetes mounts them."""
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text(encoding="utf-8"))
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in secret["stringData"].items():
        (directory / key).write_text(value, encoding="utf-8")
    data: dict[str, str] = secret["stringData"]
    return data


# --- the rendered base ------------------------------------------------------------------


def test_the_base_renders_every_part(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(doc["kind"] for doc in rendered)

    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    namespace = one(rendered, "Namespace")["metadata"]["name"]
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]


def test_probes_ask_healthz_for_liveness_and_readyz_for_readiness(
    rendered: list[dict[str, Any]],
) -> None:
    spec = container(rendered)
    port = {p["name"]: p["containerPort"] for p in spec["ports"]}

    assert port == {"http": 8080}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert spec["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_the_container_is_unprivileged_read_only_and_bounded(
    rendered: list[dict[str, Any]],
) -> None:
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    spec = container(rendered)
    security = spec["securityContext"]
    dockerfile_user = next(
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.startswith("USER ")
    )

    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert dockerfile_user == f"{pod['securityContext']['runAsUser']}:10001"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for bound in ("requests", "limits"):
        assert set(spec["resources"][bound]) == {"cpu", "memory"}
    # The only writable place: Python and the proxy may write temporary files there.
    writable = [m["mountPath"] for m in spec["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/tmp"]


def test_config_and_secrets_are_mounted_where_the_proxy_reads_them(
    rendered: list[dict[str, Any]],
) -> None:
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    spec = container(rendered)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in spec["volumeMounts"]}
    config_map = one(rendered, "ConfigMap")
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text(encoding="utf-8"))

    config_mount = mounts["/etc/aggregator"]
    assert "subPath" not in config_mount  # a subPath mount never sees ConfigMap updates
    assert volumes[config_mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert spec["args"][-2:] == ["--config", "/etc/aggregator/config.yaml"]
    assert set(config_map["data"]) == {"config.yaml"}
    secret_mount = mounts[SECRETS_DIR]
    assert volumes[secret_mount["name"]]["secret"]["secretName"] == secret["metadata"]["name"]
    assert secret["metadata"]["namespace"] == config_map["metadata"]["namespace"]
    # The Secret's files are readable by the pod's group, and only by it.
    assert volumes[secret_mount["name"]]["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_the_configmaps_config_loads_with_the_example_secrets_files(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    text = one(rendered, "ConfigMap")["data"]["config.yaml"]
    secrets = secret_files(tmp_path)
    referenced = {part.split("}")[0] for part in text.split("${file:" + SECRETS_DIR + "/")[1:]}

    settings = parse_settings(text.replace(SECRETS_DIR, str(tmp_path)), env={})

    assert referenced == set(secrets)  # every file the config reads, and no more
    assert settings.auth.api_tokens[0].get_secret_value() == secrets["groove-api-token"]
    assert settings.cache.url == secrets["redis-url"]
    assert settings.server.port == 8080
    # Every connector is written out, waiting for its secret and `enabled: true`.
    assert set(settings.connectors) == {"stripe", "db", "crm"}
    assert settings.enabled_connectors() == []


def test_service_pdb_and_network_policy_select_the_pods(rendered: list[dict[str, Any]]) -> None:
    labels = one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(rendered, "Service")["spec"]
    budget = one(rendered, "PodDisruptionBudget")["spec"]
    policy = one(rendered, "NetworkPolicy")["spec"]

    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] == "http"
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] < one(rendered, "Deployment")["spec"]["replicas"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


# --- checkov -------------------------------------------------------------------------------


def scan(tool: str, framework: str, *files: Path) -> dict[str, Any]:
    """checkov's JSON report for ``files``, with nothing fetched from the network."""
    argv = [tool, "--skip-download", "--compact", "--output", "json", "--framework", framework]
    for file in files:
        argv += ["--file", str(file)]
    env = {
        **os.environ,
        "BC_SKIP_MAPPING": "TRUE",
        "HTTP_PROXY": NOWHERE,
        "HTTPS_PROXY": NOWHERE,
        "NO_PROXY": "",
    }
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def readme_skips() -> set[tuple[str, str]]:
    """The (check, file) pairs the README's checkov table lists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("<!-- checkov-skips:start -->")[1].split("<!-- checkov-skips:end -->")[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `CKV")]
    return {(row[1].split("`")[1], row[2].strip(" `")) for row in rows}


def skipped(report: dict[str, Any]) -> set[tuple[str, str]]:
    """Each skipped check with the file it is written in; asserts a reason is given."""
    found = set()
    for check in report["results"]["skipped_checks"]:
        assert check["check_result"].get("suppress_comment", "").strip(), check["check_id"]
        path = Path(check["file_abs_path"])
        if path.name == RENDERED:  # a resource of the base: its own manifest
            kind = check["resource"].split(".")[0]
            found.add((check["check_id"], f"deploy/kubernetes/{kind.lower()}.yaml"))
        else:
            found.add((check["check_id"], path.relative_to(ROOT).as_posix()))
    return found


def test_checkov_finds_nothing_unexplained(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    tool = checkov()
    manifests = tmp_path / RENDERED
    manifests.write_text(yaml.safe_dump_all(rendered, sort_keys=False), encoding="utf-8")

    kubernetes = scan(tool, "kubernetes", manifests)
    dockerfiles = scan(tool, "dockerfile", *DOCKERFILES)

    for report in (kubernetes, dockerfiles):
        failed = [(c["check_id"], c["file_path"]) for c in report["results"]["failed_checks"]]
        assert failed == []
        assert report["summary"]["passed"] > 10
    explained = skipped(kubernetes) | skipped(dockerfiles)
    assert explained == readme_skips()


# --- a ConfigMap update, as the kubelet makes it -------------------------------------------


class MountedConfigMap:
    """A directory laid out as the kubelet mounts a ConfigMap, updated the way it does."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.versions = 0
        directory.mkdir()

    def write(self, files: dict[str, str]) -> None:
        """Write a new version: a timestamped directory, then ``..data`` swapped by rename."""
        self.versions += 1
        version = f"..2026_11_28_07_00_{self.versions:02d}.{time.time_ns()}"
        (self.directory / version).mkdir()
        for name, text in files.items():
            (self.directory / version / name).write_text(text, encoding="utf-8")
        data = self.directory / "..data"
        previous = os.readlink(data) if data.is_symlink() else None
        (self.directory / "..data_tmp").symlink_to(version)
        os.replace(self.directory / "..data_tmp", data)
        for name in files:
            link = self.directory / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        if previous is not None:
            shutil.rmtree(self.directory / previous)


async def test_a_configmap_update_is_reloaded_without_a_restart(
    crm: FakeCrm, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    secrets = secret_files(tmp_path / "secrets")
    text = (BASE / "config.yaml").read_text(encoding="utf-8")
    text = text.replace(SECRETS_DIR, str(tmp_path / "secrets"))
    (tmp_path / "secrets" / "redis-url").write_text("memory://", encoding="utf-8")
    mounted = MountedConfigMap(tmp_path / "config")
    mounted.write({"config.yaml": text})
    server = ServeProcess(mounted.directory / "config.yaml", tmp_path / "serve.log")
    profile_url = f"{server.url}/profile"
    params = {"email": "ada@example.com", "api_token": secrets["groove-api-token"]}
    try:
        await server.wait_ready(session)
        async with session.get(profile_url, params=params) as response:
            before = await response.json()
        enabled = text.replace(
            "enabled: false         # true once the Secret has crm-token and the url is yours",
            "enabled: true",
        ).replace("https://crm.example.com/api/contacts?email={email}", crm.template)
        mounted.write({"config.yaml": enabled})
        after: dict[str, Any] = {}
        for _ in range(100):  # the proxy polls every 2 s
            await asyncio.sleep(0.1)
            async with session.get(profile_url, params=params) as response:
                after = await response.json()
            if "crm_plan_name" in after:
                break
        pid_unchanged = server.proc.poll() is None
    finally:
        server.stop()

    assert "crm_plan_name" not in before
    assert after.get("crm_plan_name") == "Pro", server.output()
    assert pid_unchanged
    assert "config reloaded" in server.output()
