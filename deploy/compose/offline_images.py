"""Make the two images the offline compose stack starts from, without any registry.

    sudo .venv/bin/python deploy/compose/offline_images.py
    docker compose -f docker-compose.yml -f deploy/compose/offline.yml up --build --pull never

1. ``groove-aggregator-offline/base:bookworm``: Debian bookworm made by ``debootstrap``
   from Debian's package mirror, with python3, python3-venv, redis-server and
   postgresql-15, then ``docker import``-ed. The root filesystem is kept as a tarball in
   the cache directory (``--cache-dir``, default /var/cache/groove-profile-aggregator)
   and made again once it is 30 days old or the package list changes.
2. ``groove-aggregator-offline/wheelhouse:local``: ``/wheels``, the project and every
   dependency as wheels, built on this machine with pip (which reaches PyPI where build
   containers may not) for the base image's Python version, then ``docker import``-ed.

The proxy's Dockerfile installs from that wheelhouse with ``--no-index``; the stand-ins
for Redis and PostgreSQL (deploy/compose/standins/) build on the base. Needs root (for
debootstrap), ``debootstrap``, the ``docker`` CLI (``DOCKER_HOST`` is honoured), and this
interpreter's pip and ``packaging``. The test suite runs it (test_compose_up.py).
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[2]
PROJECT = canonicalize_name("groove-profile-aggregator")
# What the Dockerfile copies to build the project (the build context's allow-list).
PROJECT_FILES = ("pyproject.toml", "README.md", "aggregator", "connectors")

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "redis-server", "postgresql-15")
# Left out of the image: documentation, downloaded packages, package lists, and the
# cluster the postgresql package creates (the stand-in makes its own).
PRUNED = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "var/lib/postgresql/15/main",
    "etc/postgresql/15/main",
)
MAX_AGE_DAYS = 30
DEFAULT_CACHE = Path("/var/cache/groove-profile-aggregator")
BASE_TAG = "groove-aggregator-offline/base:bookworm"
WHEELHOUSE_TAG = "groove-aggregator-offline/wheelhouse:local"


def log(message: str) -> None:
    """One progress line on stderr."""
    sys.stderr.write(f"offline_images: {message}\n")
    sys.stderr.flush()


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Log how long ``step`` took."""
    started = time.monotonic()
    yield
    log(f"{step}: {time.monotonic() - started:.1f} s")


# --- the Debian base -------------------------------------------------------------------


def base_tarball(cache_dir: Path, mirror: str = MIRROR, refresh: bool = False) -> Path:
    """The cached root filesystem tarball, made with debootstrap when missing or old."""
    recipe = json.dumps([SUITE, "minbase", PACKAGES, PRUNED, mirror]).encode()
    tarball = cache_dir / f"debian-{SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}.tar"
    if tarball.exists() and not refresh:
        age_days = (time.time() - tarball.stat().st_mtime) / 86400
        if age_days < MAX_AGE_DAYS:
            log(f"base: cached {tarball} ({age_days:.0f} days old)")
            return tarball
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f"debian-{SUITE}-*.tar"):
        stale.unlink()
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir))
    try:
        rootfs = work / "rootfs"
        with timed(f"debootstrap {SUITE} from {mirror}"):
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    str(rootfs),
                    mirror,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        for path in PRUNED:
            shutil.rmtree(rootfs / path, ignore_errors=True)
        partial = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    finally:
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)
    log(f"base: made {tarball}")
    return tarball


def unmount_below(directory: Path) -> None:
    """Unmount what an interrupted debootstrap left mounted there (/proc, /sys)."""
    prefix = f"{directory.resolve()}/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


# --- the wheelhouse --------------------------------------------------------------------


def requires_dist(wheel: Path) -> list[Requirement]:
    """The ``Requires-Dist`` entries of a wheel's metadata."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode("utf-8"))
    return [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]


def missing_requirements(wheel_dir: Path, python_version: str) -> list[str]:
    """Requirements that apply on ``python_version`` but have no wheel in ``wheel_dir``.

    pip resolves for the interpreter it runs on, so a dependency whose marker holds only
    on the image's Python (``async-timeout; python_full_version < "3.11.3"`` for a host on
    3.11.7 and Debian's 3.11.2) would be missing from the wheelhouse.
    """
    environment = {key: str(value) for key, value in default_environment().items()}
    environment["python_full_version"] = python_version
    environment["python_version"] = ".".join(python_version.split(".")[:2])
    wheels: dict[NormalizedName, Path] = {
        parse_wheel_filename(wheel.name)[0]: wheel for wheel in wheel_dir.glob("*.whl")
    }
    missing: dict[NormalizedName, str] = {}
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    todo: list[tuple[NormalizedName, frozenset[str]]] = [(PROJECT, frozenset())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in wheels:
            continue
        seen.add((name, extras))
        for requirement in requires_dist(wheels[name]):
            marker = requirement.marker
            if marker is not None and not any(
                marker.evaluate({**environment, "extra": extra}) for extra in {"", *extras}
            ):
                continue
            needed = canonicalize_name(requirement.name)
            if needed not in wheels:
                requirement.marker = None
                missing[needed] = str(requirement)
            todo.append((needed, frozenset(requirement.extras)))
    return sorted(missing.values())


def build_wheelhouse(python: str, wheel_dir: Path, python_version: str) -> None:
    """Wheels of the project and its dependencies for ``python_version``, built with pip."""
    with tempfile.TemporaryDirectory(prefix="project-") as tmp:
        source = Path(tmp)
        for name in PROJECT_FILES:
            origin = ROOT / name
            if origin.is_dir():
                ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
                shutil.copytree(origin, source / name, ignore=ignored)
            else:
                shutil.copy2(origin, source / name)
        pip = [python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheel_dir)]
        subprocess.run([*pip, str(source)], check=True)
        for _ in range(5):
            missing = missing_requirements(wheel_dir, python_version)
            if not missing:
                return
            log(f"wheels for Python {python_version} also need: {', '.join(missing)}")
            subprocess.run([*pip, *missing], check=True)
    raise RuntimeError(f"the wheelhouse still lacks {missing} for Python {python_version}")


# --- docker ----------------------------------------------------------------------------


def docker(*args: str, capture: bool = False) -> str:
    """Run the docker CLI; its standard output when ``capture``."""
    result = subprocess.run(
        ["docker", *args],
        check=True,
        text=True,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
    )
    return result.stdout if capture else ""


def image_python(image: str) -> str:
    """The Python version inside ``image`` (run without a network)."""
    script = "import platform; print(platform.python_version())"
    return docker("run", "--rm", "--network", "none", image, "python3", "-c", script, capture=True)


def import_wheelhouse(wheel_dir: Path, tag: str) -> None:
    """``docker import`` the wheels as an image holding only ``/wheels``."""
    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as tmp:
        archive = Path(tmp) / "wheelhouse.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(wheel_dir, arcname="wheels")
        docker("import", str(archive), tag)


def make_images(
    cache_dir: Path,
    python: str = sys.executable,
    mirror: str = MIRROR,
    base_tag: str = BASE_TAG,
    wheelhouse_tag: str = WHEELHOUSE_TAG,
    refresh: bool = False,
) -> None:
    """Make and import both images."""
    tarball = base_tarball(cache_dir, mirror, refresh)
    with timed(f"docker import {base_tag}"):
        docker("import", str(tarball), base_tag)
    python_version = image_python(base_tag).strip()
    with tempfile.TemporaryDirectory(prefix="wheels-") as tmp:
        with timed(f"pip wheel for Python {python_version}"):
            build_wheelhouse(python, Path(tmp), python_version)
        with timed(f"docker import {wheelhouse_tag}"):
            import_wheelhouse(Path(tmp), wheelhouse_tag)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module's docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("AGGREGATOR_IMAGE_CACHE", DEFAULT_CACHE)),
        help="where the base's root filesystem tarball is kept (default %(default)s)",
    )
    parser.add_argument("--mirror", default=MIRROR, help="Debian mirror (default %(default)s)")
    parser.add_argument("--base-tag", default=BASE_TAG)
    parser.add_argument("--wheelhouse-tag", default=WHEELHOUSE_TAG)
    parser.add_argument("--refresh", action="store_true", help="debootstrap again")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("debootstrap needs root: run it with sudo")
    make_images(
        args.cache_dir,
        mirror=args.mirror,
        base_tag=args.base_tag,
        wheelhouse_tag=args.wheelhouse_tag,
        refresh=args.refresh,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
