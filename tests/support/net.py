"""Ports and local HTTP servers for tests: each helper defined once, here."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from aggregator.samples.serving import serve

# A fake upstream left with a sleeping handler must not hold a test's teardown for the
# rest of that sleep: in-flight handlers get this long, then they are cancelled.
SHUTDOWN_SECONDS = 0.1


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session, closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


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


class LocalServer:
    """Routes served on 127.0.0.1 (a free port) until ``close``, which cancels the handlers
    still running (a delay, an endless body) at once instead of waiting for them."""

    def __init__(self, shutdown_timeout: float = 0.5) -> None:
        self.url = ""
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def serve(self, routes: Iterable[web.RouteDef]) -> str:
        """Serve ``routes``; returns the base URL."""
        app = web.Application(middlewares=[self._track])
        app.add_routes(routes)
        self._runner, self.url = await serve_app(app, shutdown_timeout=self._shutdown_timeout)
        return self.url

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            return await handler(request)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        """Stop serving; handlers still running are cancelled."""
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Startable(Protocol):
    """A local server that ``start``s and ``close``s."""

    async def start(self) -> object:
        """Start serving."""

    async def close(self) -> None:
        """Stop serving."""


StartableT = TypeVar("StartableT", bound=Startable)


@asynccontextmanager
async def started(server: StartableT) -> AsyncIterator[StartableT]:
    """``server`` started, closed on exit."""
    await server.start()
    try:
        yield server
    finally:
        await server.close()
