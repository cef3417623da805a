"""Ports and local HTTP servers for tests: each helper defined once, here."""

from __future__ import annotations

import socket

from aiohttp import web

from aggregator.samples.serving import serve

# A fake upstream left with a sleeping handler must not hold a test's teardown for the
# rest of that sleep: in-flight handlers get this long, then they are cancelled.
SHUTDOWN_SECONDS = 0.1


def free_port() -> int:
    """A TCP port nobody listens on right now (also a port where connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bindable(port: int) -> bool:
    """True when 127.0.0.1:port can be bound now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_answers(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


async def serve_app(
    app: web.Application, *, shutdown_timeout: float = SHUTDOWN_SECONDS
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on 127.0.0.1 on a free port: (its runner, to clean up, and its base URL).

    Handlers still running at cleanup are cancelled after ``shutdown_timeout`` seconds.
    """
    return await serve(app, handler_cancellation=True, shutdown_timeout=shutdown_timeout)
