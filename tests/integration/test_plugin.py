"""The example plugin in examples/connector-plugin, built and installed as a user would.

The wheel is installed into a private directory put on PYTHONPATH of an ``aggregator``
subprocess, so the shared environment is never changed and a fresh process sees the new
distribution's entry point (the registry caches what it found in this process).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.proxy import TOKEN

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SOURCE = ROOT / "examples" / "connector-plugin"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    """Run this interpreter's pip quietly; the caller checks the outcome."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def build_wheel(source: Path, dist: Path) -> Path:
    """Build the plugin's wheel: offline with this environment's setuptools when it can.

    setuptools older than 70.1 cannot build a wheel without the ``wheel`` package; then
    pip builds it in an isolated environment, which fetches setuptools from the index.
    """
    offline = pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source))
    if offline.returncode != 0:
        isolated = pip("wheel", "--no-deps", "-w", str(dist), str(source))
        assert isolated.returncode == 0, offline.stderr + isolated.stderr
    wheels = list(dist.glob("aggregator_gravatar-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding the installed example plugin, and nothing else."""
    work = tmp_path_factory.mktemp("plugin")
    try:
        source = work / "source"
        # Building in a copy keeps build/ and *.egg-info out of the repository.
        shutil.copytree(
            PLUGIN_SOURCE,
            source,
            ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
        )
        wheel = build_wheel(source, work / "dist")
        with zipfile.ZipFile(wheel) as archive:
            entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
            assert (
                "gravatar = aggregator_gravatar:GravatarConnector"
                in archive.read(entry_points).decode()
            )
        site = work / "site"
        installed = pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel))
        assert installed.returncode == 0, installed.stderr
        yield site
    finally:
        shutil.rmtree(work, ignore_errors=True)


def aggregator(*args: str, cwd: Path, site: Path | None) -> tuple[int, str, str]:
    """Run ``python -m aggregator ARGS``, with ``site`` on the path when given."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )
    return done.returncode, done.stdout, done.stderr


def write_config(directory: Path, connector: str) -> Path:
    """A config.yaml with an in-process cache and the given connectors block."""
    path = directory / "config.yaml"
    head = f'auth: {{api_tokens: ["{TOKEN}"]}}\ncache: {{url: "memory://"}}\nconnectors:\n'
    path.write_text(head + textwrap.indent(textwrap.dedent(connector), "  "))
    return path


GRAVATAR = """\
    gravatar:
      type: gravatar
      size: 120
"""


def test_plugin_fields_show_up_in_a_profile(plugin_site: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, GRAVATAR)
    code, out, err = aggregator(
        "preview",
        " Ada.Lovelace@Gmail.com",
        "--config",
        str(config),
        cwd=tmp_path,
        site=plugin_site,
    )
    assert code == 0, err
    profile = orjson.loads(out)
    digest = hashlib.sha256(b"ada.lovelace@gmail.com").hexdigest()
    assert (
        profile["gravatar_avatar_url"] == f"https://gravatar.com/avatar/{digest}?s=120&d=identicon"
    )
    assert profile["gravatar_domain"] == "gmail.com"
    assert profile["gravatar_free_mail"] is True
    assert profile["profile_complete"] is True
    assert "gravatar_error" not in profile
    assert any(line.split()[:2] == ["gravatar", "ok"] for line in err.splitlines()), err


def test_plugin_prefix_and_own_settings_are_honoured(plugin_site: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """\
        person:
          type: gravatar
          prefix: who
          default_image: mp
          free_mail_domains: [example.com]
        """,
    )
    code, out, err = aggregator(
        "preview", "bob@example.com", "--config", str(config), cwd=tmp_path, site=plugin_site
    )
    assert code == 0, err
    profile = orjson.loads(out)
    assert profile["who_avatar_url"].endswith("?s=80&d=mp")
    assert profile["who_domain"] == "example.com"
    assert profile["who_free_mail"] is True
    assert not any(key.startswith(("person_", "gravatar_")) for key in profile)


def test_check_passes_with_the_plugin(plugin_site: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, GRAVATAR)
    code, out, err = aggregator("check", "--config", str(config), cwd=tmp_path, site=plugin_site)
    assert code == 0, out + err
    assert "ok   gravatar (gravatar)" in out
    assert "all checks passed" in out


def test_plugin_settings_are_validated_by_its_model(plugin_site: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """\
        gravatar:
          type: gravatar
          size: 0
          colour: red
        """,
    )
    code, out, err = aggregator("check", "--config", str(config), cwd=tmp_path, site=plugin_site)
    assert code == 2, out + err
    assert "configuration refused" in err
    assert "config.yaml:6: connectors.gravatar.size:" in err
    assert "config.yaml:7: connectors.gravatar.colour: unknown key" in err


def test_without_the_plugin_installed_the_type_is_unknown(tmp_path: Path) -> None:
    config = write_config(tmp_path, GRAVATAR)
    code, out, err = aggregator("check", "--config", str(config), cwd=tmp_path, site=None)
    assert code == 2, out + err
    assert "unknown connector type 'gravatar'" in err
