"""``aggregator serve --workers 2``: two processes on one port, reloaded and stopped together.

Which worker answers a connection is the kernel's choice; to know, the test stops one
worker (SIGSTOP) so that only the other can accept, then swaps them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp

from tests.support.serve import ServeProcess
from tests.support.upstreams import FakeCrm

OLD_TOKEN = "workers-old-token-0123456789"
NEW_TOKEN = "workers-new-token-0123456789"


def write_config(path: Path, crm: FakeCrm, token: str) -> None:
    path.write_text(
        textwrap.dedent(
            f"""\
            server: {{host: 127.0.0.1, drain_timeout: 10}}
            auth: {{api_tokens: ["{token}"]}}
            cache: {{url: "memory://"}}
            connectors:
              crm: {{type: rest, url: "{crm.template}", select: "data[0]", timeout: 5}}
            """
        )
    )


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == pid:
            found.append(int(entry))
    return sorted(found)


@contextmanager
def only(worker: int, workers: list[int]) -> Iterator[None]:
    """Stop every worker but ``worker`` so that it alone accepts connections."""
    stopped = [pid for pid in workers if pid != worker]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


async def status_of(url: str, token: str) -> int:
    """The status of one profile request on a fresh connection."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, params={"email": "ada@example.com", "api_token": token}) as response,
    ):
        await response.read()
        return response.status


@asynccontextmanager
async def two_workers(
    tmp_path: Path, config: Path
) -> AsyncIterator[tuple[ServeProcess, list[int]]]:
    server = ServeProcess(config, tmp_path / "serve.log", args=["--workers", "2"])
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
        for _ in range(100):
            workers = children(server.proc.pid)
            if len(workers) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(workers) == 2, server.output()
        yield server, workers
    finally:
        server.stop()


async def test_two_workers_answer_on_one_port_and_sighup_reloads_both(
    tmp_path: Path, crm: FakeCrm
) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, crm, OLD_TOKEN)
    async with two_workers(tmp_path, config) as (server, workers):
        url = f"{server.url}/profile"
        for worker in workers:
            with only(worker, workers):
                assert await status_of(url, OLD_TOKEN) == 200
        # Each worker has its own memory cache: each fetched the profile once.
        assert crm.calls["ada@example.com"] == 2

        # Same modification time: the file watcher cannot notice; only SIGHUP reloads.
        before = config.stat()
        write_config(config, crm, NEW_TOKEN)
        os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
        server.proc.send_signal(signal.SIGHUP)
        for worker in workers:
            with only(worker, workers):
                for _ in range(100):
                    if await status_of(url, NEW_TOKEN) == 200:
                        break
                    await asyncio.sleep(0.1)
                assert await status_of(url, NEW_TOKEN) == 200
                assert await status_of(url, OLD_TOKEN) == 401
        assert children(server.proc.pid) == workers  # reloaded in place, not replaced
    assert server.output().count("config reloaded") == 2


async def test_sigterm_drains_every_worker_and_stops_them_all(tmp_path: Path, crm: FakeCrm) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, crm, OLD_TOKEN)
    crm.delay["ada@example.com"] = 1.5
    async with two_workers(tmp_path, config) as (server, workers):
        url = f"{server.url}/profile"
        in_flight = []
        for worker in workers:
            with only(worker, workers):
                in_flight.append(asyncio.ensure_future(status_of(url, OLD_TOKEN)))
                while crm.calls["ada@example.com"] < len(in_flight):
                    await asyncio.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        statuses = await asyncio.gather(*in_flight)
        code = await asyncio.to_thread(server.proc.wait, 30)
    assert statuses == [200, 200]  # both requests finished although the stop came first
    assert code == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    output = server.output()
    assert "stopped: all workers have exited" in output
    assert "Traceback" not in output


async def test_a_killed_worker_is_replaced(tmp_path: Path, crm: FakeCrm) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, crm, OLD_TOKEN)
    async with two_workers(tmp_path, config) as (server, workers):
        os.kill(workers[0], signal.SIGKILL)
        for _ in range(100):
            now = children(server.proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            await asyncio.sleep(0.1)
        assert len(now) == 2 and workers[0] not in now
        assert await status_of(f"{server.url}/profile", OLD_TOKEN) == 200
