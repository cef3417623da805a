"""deploy/compose/offline_images.py: the wheelhouse is complete for the image's Python.

pip resolves for the interpreter it runs on; the image's may be older (Debian bookworm's
3.11.2), and a marker such as ``python_full_version < "3.11.3"`` then asks for more.
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "offline_images.py"


@pytest.fixture(scope="module")
def offline_images() -> ModuleType:
    spec = importlib.util.spec_from_file_location("offline_images", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wheel(directory: Path, name: str, version: str, *requires: str) -> None:
    """A minimal wheel: just the metadata that lists its requirements."""
    dist = f"{name.replace('-', '_')}-{version}"
    lines = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}"]
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    with zipfile.ZipFile(directory / f"{dist}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{dist}.dist-info/METADATA", "\n".join(lines) + "\n")


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    """The project, redis with a Python-version marker and an extra, and a Windows-only dep."""
    wheel(tmp_path, "groove-profile-aggregator", "0.1.0", "redis[hiredis]>=5.0", "aiohttp>=3.10")
    wheel(
        tmp_path,
        "redis",
        "8.1.0",
        'async-timeout>=4.0.3; python_full_version < "3.11.3"',
        'hiredis>=3.2.0; extra == "hiredis"',
        'cryptography>=36; extra == "ocsp"',
    )
    wheel(tmp_path, "hiredis", "3.5.0")
    wheel(tmp_path, "aiohttp", "3.14.5", 'colorama; sys_platform == "win32"')
    return tmp_path


def test_a_dependency_only_the_images_python_needs_is_reported(
    offline_images: ModuleType, wheelhouse: Path
) -> None:
    assert offline_images.missing_requirements(wheelhouse, "3.11.2") == ["async-timeout>=4.0.3"]


def test_nothing_is_missing_for_the_python_pip_resolved_for(
    offline_images: ModuleType, wheelhouse: Path
) -> None:
    assert offline_images.missing_requirements(wheelhouse, "3.11.7") == []


def test_requested_extras_are_followed_and_others_are_not(
    offline_images: ModuleType, wheelhouse: Path
) -> None:
    (wheelhouse / "hiredis-3.5.0-py3-none-any.whl").unlink()

    assert offline_images.missing_requirements(wheelhouse, "3.11.7") == ["hiredis>=3.2.0"]
