"""``aggregator serve`` as a process: port in use, shutdown, the loopback rule, HTTP guards.

Raw sockets play the clients aiohttp's own client would never be: a malformed request line
with a token in it, and slow clients that send their request head byte by byte.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.serve import ROOT, ServeProcess, run_aggregator

TOKEN = "serve-test-token-0123456789"


def write_config(path: Path, *, token: str = TOKEN, server: str = "") -> Path:
    path.write_text(
        textwrap.dedent(
            f"""\
            server:
              host: 127.0.0.1
              drain_timeout: 5
              {server}
            auth: {{api_tokens: ["{token}"]}}
            """
        )
    )
    return path


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def test_a_port_in_use_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_aggregator("serve", "--config", str(config), "--port", str(port))
    assert result.returncode == 1
    assert f"port {port} is in use" in result.stderr
    assert "serving on" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_stops_with_a_line_and_exit_0(tmp_path: Path, workers: str) -> None:
    config = write_config(tmp_path / "config.yaml")
    server = ServeProcess(config, tmp_path / "serve.log", args=["--workers", workers])
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
    finally:
        code = server.stop()
    output = server.output()
    assert code == 0, output
    assert "stopped" in output.splitlines()[-1]
    assert "Traceback" not in output


# -- listening beyond loopback without a configured token (issue 11) -----------------


def shipped_env(**extra: str) -> dict[str, str]:
    env = {"GROOVE_API_TOKEN": "", "HOST": "", "PORT": "", "REDIS_URL": ""}
    return {**env, **extra}


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--host", "0.0.0.0"], {}),
        ([], {"HOST": "0.0.0.0"}),
    ],
)
def test_shipped_config_without_token_refuses_to_listen_beyond_loopback(
    args: list[str], env: dict[str, str]
) -> None:
    environ = {k: v for k, v in {**os.environ, **shipped_env(**env)}.items() if v != ""}
    result = subprocess.run(
        [sys.executable, "-m", "aggregator", "serve", "--config", "config.yaml", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=False,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "set GROOVE_API_TOKEN" in result.stderr
    assert "serving on" not in result.stderr


async def test_shipped_config_without_token_listens_on_loopback_only(tmp_path: Path) -> None:
    """The README's one-command start: works, on 127.0.0.1, saying why not 0.0.0.0."""
    environ = {k: v for k, v in {**os.environ, **shipped_env()}.items() if v != ""}
    server = ServeProcess(ROOT / "config.yaml", tmp_path / "serve.log", env=environ)
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
            url = f"{server.url}/profile?email=ada@example.com&api_token=dev-token"
            async with session.get(url) as response:
                assert response.status == 200
    finally:
        server.stop()
    output = server.output()
    assert f"serving on http://127.0.0.1:{server.port}/profile" in output
    assert "listening on 127.0.0.1 only" in output
    assert "public development token 'dev-token'" in output


async def test_a_weak_token_beyond_loopback_starts_with_a_warning(tmp_path: Path) -> None:
    """The compose stack sets GROOVE_API_TOKEN=demo-token and listens on 0.0.0.0."""
    environ = {k: v for k, v in {**os.environ, **shipped_env()}.items() if v != ""}
    environ["GROOVE_API_TOKEN"] = "demo-token"
    server = ServeProcess(
        ROOT / "config.yaml", tmp_path / "serve.log", env=environ, args=["--host", "0.0.0.0"]
    )
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
    finally:
        server.stop()
    output = server.output()
    assert f"serving on http://0.0.0.0:{server.port}/profile" in output
    assert "well-known token 'demo-token'" in output


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_reload_to_the_public_token_is_refused_beyond_loopback(
    tmp_path: Path, workers: str
) -> None:
    """Listening on 0.0.0.0 with a real token, a config edited to accept dev-token is refused
    on SIGHUP by every process, and the running token stays the only one accepted."""
    config = write_config(tmp_path / "config.yaml")
    server = ServeProcess(
        config, tmp_path / "serve.log", args=["--host", "0.0.0.0", "--workers", workers]
    )
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
            write_config(config, token="dev-token")
            server.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while server.output().count("config reload refused") < int(workers):
                assert time.monotonic() < deadline, server.output()
                await asyncio.sleep(0.05)
            statuses = []
            for token in ("dev-token", TOKEN):
                url = f"{server.url}/profile?email=ada@example.com&api_token={token}"
                for _ in range(4):  # with two workers, either may answer
                    async with session.get(url) as response:
                        statuses.append((token, response.status))
    finally:
        server.stop()
    assert set(statuses) == {("dev-token", 401), (TOKEN, 200)}
    assert "public development token 'dev-token' while the proxy listens beyond loopback" in (
        server.output()
    )


# -- HTTP guards, in one process and in each of two workers ---------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_malformed_requests_get_a_fixed_json_body(tmp_path: Path, workers: str) -> None:
    config = write_config(tmp_path / "config.yaml")
    server = ServeProcess(config, tmp_path / "serve.log", args=["--workers", workers])
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
        for request in (
            f"GET /profile?api_token={TOKEN}&email=a@b.co HTTP/1.1 junk\r\n\r\n",
            f"GET /profile?api_token={TOKEN} HTTP/9.9\r\nHost: x\r\n\r\n",
            f"G\x01T /profile?api_token={TOKEN} HTTP/1.1\r\n\r\n",
            f"GET /profile?api_token={TOKEN} HTTP/1.1\r\nBad Header\r\n\r\n",
        ):
            answer = await raw_exchange(server.port, request.encode("latin-1"))
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == b"400", answer
            assert b"Content-Type: application/json" in head
            assert body == b'{"error":"malformed request"}'
            assert TOKEN.encode() not in answer
    finally:
        server.stop()
    assert TOKEN not in server.output()


def trickle_head(port: int, gap: float, limit: float) -> tuple[bytes, float]:
    """Send a request head one byte every ``gap`` s until the server answers or closes.

    What came back (``b"reset"`` when a byte crossed the server's close) and after how long.
    """
    head = f"GET /profile?api_token={TOKEN}&email=a@b.co HTTP/1.1\r\nHost: x\r\n".encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        try:
            for byte in head * 100:
                if time.monotonic() - started > limit or select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(bytes([byte]))
                time.sleep(gap)
            sock.settimeout(limit)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            answer = b"reset"
        return answer, time.monotonic() - started


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_slow_clients_are_cut_off_after_the_header_timeout(
    tmp_path: Path, workers: str
) -> None:
    config = write_config(tmp_path / "config.yaml", server="header_timeout: 0.5")
    server = ServeProcess(config, tmp_path / "serve.log", args=["--workers", workers])
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
            slow = [asyncio.to_thread(trickle_head, server.port, 0.05, 20) for _ in range(8)]
            idle = await asyncio.open_connection("127.0.0.1", server.port)
            # Meanwhile a normal client is served, several times on one connection.
            for _ in range(3):
                async with session.get(f"{server.url}/healthz") as response:
                    assert response.status == 200
            results = await asyncio.gather(*slow)
            silent = await asyncio.wait_for(idle[0].read(), 20)
            idle[1].close()
    finally:
        server.stop()
    for answer, elapsed in results:
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout") or answer == b"reset", answer
        assert elapsed < 15, elapsed
    assert silent.startswith(b"HTTP/1.1 408 Request Timeout"), silent
    assert silent.endswith(b'{"error":"the request head was not received in time"}')


async def test_a_slow_second_request_on_a_kept_alive_connection_is_cut_off(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "config.yaml", server="header_timeout: 0.5")
    server = ServeProcess(config, tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert first.startswith(b"HTTP/1.1 200")
        await asyncio.sleep(1.0)  # idle keep-alive is not a slow head
        assert not reader.at_eof()
        writer.write(b"GET /hea")
        rest = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        server.stop()
    assert b"408 Request Timeout" in rest
