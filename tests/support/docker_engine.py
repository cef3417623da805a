"""A private Docker engine for one test: started here, stopped and removed after.

``dockerd`` runs as root with its own socket, data and state directories under one fresh
temporary directory (a tmpfs mounted there when possible: about 1 GB for the compose
test), so it shares nothing with a Docker that may already run here, and everything it
made goes when that directory does. It makes no ``docker0`` bridge
(``--bridge=none``) and changes no firewall rule (``--iptables=false``): no NAT, so
nothing beyond this machine can answer a container (Docker enforces ``internal: true``
networks with firewall rules, so here they only lack NAT like the others; the stack's
containers only ever address each other by service name). Its HTTP(S) proxy is a closed port on
127.0.0.1, so any attempt to reach a registry fails at once. After it stops, anything left
behind is removed and the removal is checked: its processes, mounts, network interfaces,
and the iptables rules (unchanged). One such engine runs at a time on a machine (a lock
file), since its networks use a fixed address pool.

Whether the engine can run at all is asked of ``unavailable()``; the test reports itself
as not run, with that reason, when it cannot (``AGGREGATOR_DOCKER_TEST=require`` makes that
a failure, ``=off`` skips it).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCK_FILE = Path(tempfile.gettempdir()) / "groove-profile-aggregator-docker-test.lock"
# Compose networks get /26 subnets from here, away from Docker's usual 172.17-172.30.
ADDRESS_POOL = "base=172.31.252.0/22,size=26"
# Connections to this port on 127.0.0.1 are refused: a proxy that goes nowhere.
NO_PROXY_TARGET = "http://127.0.0.1:9"
START_TIMEOUT = 60.0
TMPFS_SIZE = "8g"  # an upper bound: a tmpfs takes memory only for what it holds


def mode() -> str:
    """``auto`` (run when possible), ``require`` (fail when not) or ``off`` (never run)."""
    value = os.environ.get("AGGREGATOR_DOCKER_TEST", "auto").strip().lower() or "auto"
    return value if value in ("auto", "require", "off") else "auto"


def unavailable(needs: tuple[str, ...] = ()) -> str | None:
    """Why a private engine cannot run here (None when it can); ``needs``: more programs."""
    if mode() == "off":
        return "AGGREGATOR_DOCKER_TEST=off"
    if os.geteuid() != 0:
        return "dockerd needs root"
    for program in ("dockerd", "docker", *needs):
        if shutil.which(program) is None:
            return f"{program} is not installed (.ci/run installs docker.io and debootstrap)"
    return None


def _bridges() -> set[str]:
    """Bridges this engine may have made: docker0, or a br-* in its address pool."""
    result = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
    )
    pool = ipaddress.ip_network(ADDRESS_POOL.split(",")[0].removeprefix("base="))
    found = set()
    for line in result.stdout.splitlines():
        fields = line.split()
        name, address = fields[1], fields[3]
        in_pool = ipaddress.ip_interface(address).ip in pool
        if name == "docker0" or (name.startswith("br-") and in_pool):
            found.add(name)
    return found


def _iptables() -> str:
    if shutil.which("iptables-save") is None:
        return ""
    result = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    lines = result.stdout.splitlines()
    # Comments and packet counters change on their own.
    return "\n".join(line for line in lines if not line.startswith("#") and line[:1] != ":")


def _mounts_below(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, innermost first."""
    prefix = f"{directory}/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    inside = (p for p in points if p == str(directory) or p.startswith(prefix))
    return sorted(inside, reverse=True)


def _processes_using(directory: Path) -> list[int]:
    """Processes whose command line names ``directory`` (containerd, shims, proxies)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(directory).encode() in cmdline:
            found.append(int(entry.name))
    return found


@dataclass
class DockerEngine:
    """A running private ``dockerd``; ``env`` points docker and compose at it."""

    root: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path
    bridges_before: set[str] = field(default_factory=set)
    iptables_before: str = ""

    def docker(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine."""
        return subprocess.run(
            ["docker", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def log_tail(self, lines: int = 30) -> str:
        """The end of the daemon's log."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _start(root: Path) -> DockerEngine:
    (root / "daemon.json").write_text("{}\n", encoding="utf-8")
    (root / "cli").mkdir()
    socket = root / "docker.sock"
    log = root / "dockerd.log"
    bridges_before, iptables_before = _bridges(), _iptables()
    command = [
        "dockerd",
        f"--config-file={root / 'daemon.json'}",
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'run'}",
        f"--pidfile={root / 'dockerd.pid'}",
        f"--host=unix://{socket}",
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--storage-driver=overlay2",
        f"--default-address-pool={ADDRESS_POOL}",
        "--log-level=warn",
    ]
    daemon_env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HTTP_PROXY": NO_PROXY_TARGET,
        "HTTPS_PROXY": NO_PROXY_TARGET,
        "NO_PROXY": "",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=daemon_env, start_new_session=True
        )
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{socket}",
        "DOCKER_CONFIG": str(root / "cli"),
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    engine = DockerEngine(root, process, env, log, bridges_before, iptables_before)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if (
            engine.docker("version", "--format", "{{json .Server.Version}}", timeout=10).returncode
            == 0
        ):
            return engine
        time.sleep(0.5)
    reason = engine.log_tail(15)
    _stop(engine)
    raise DockerUnavailable(f"dockerd did not start:\n{reason}")


class DockerUnavailable(Exception):
    """The engine could not be started here."""


def _stop(engine: DockerEngine) -> list[str]:
    """Stop the daemon and remove all it left; what could not be removed, if anything."""
    leftovers: list[str] = []
    if engine.process.poll() is None:
        engine.process.send_signal(signal.SIGTERM)
        try:
            engine.process.wait(30)
        except subprocess.TimeoutExpired:
            engine.process.kill()
            engine.process.wait(10)
    for pid in _processes_using(engine.root):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for point in _mounts_below(engine.root):
        subprocess.run(["umount", "--lazy", point], check=False)
    for bridge in sorted(_bridges() - engine.bridges_before):
        subprocess.run(["ip", "link", "delete", bridge], check=False, capture_output=True)
    shutil.rmtree(engine.root, ignore_errors=True)
    if remaining := _processes_using(engine.root):
        leftovers.append(f"processes {remaining}")
    if remaining_mounts := _mounts_below(engine.root):
        leftovers.append(f"mounts {remaining_mounts}")
    if new_bridges := _bridges() - engine.bridges_before:
        leftovers.append(f"network bridges {sorted(new_bridges)}")
    if _iptables() != engine.iptables_before:
        leftovers.append("changed iptables rules")
    if engine.root.exists():
        leftovers.append(f"directory {engine.root}")
    return leftovers


@contextmanager
def docker_engine() -> Iterator[DockerEngine]:
    """A private engine for the ``with`` block; raises DockerUnavailable if it cannot start.

    On exit the daemon is stopped and everything it made is removed; AssertionError if
    something could not be.
    """
    LOCK_FILE.touch(exist_ok=True)
    with LOCK_FILE.open("r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # A short path: the daemon's sockets live under it (108 bytes at most).
        root = Path(tempfile.mkdtemp(prefix="gpa-docker-"))
        # In memory when possible: removing a couple of GB of image layers from a disk
        # takes half a minute, unmounting a tmpfs no time. Else on disk.
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(root)],
            capture_output=True,
            check=False,
        )
        engine = _start(root)
        try:
            yield engine
        finally:
            leftovers = _stop(engine)
        assert not leftovers, f"the private Docker engine left {', '.join(leftovers)}"


def json_lines(text: str) -> list[dict[str, Any]]:
    """Docker's ``--format json`` output: one JSON object per line, or one JSON array."""
    text = text.strip()
    if text.startswith("["):
        loaded: list[dict[str, Any]] = json.loads(text)
        return loaded
    return [json.loads(line) for line in text.splitlines() if line.strip()]
