"""The proxy on an event loop in a thread of its own, spoken to with raw bytes over a socket.

For synchronous tests (hypothesis' ``@given``) that send arbitrary, even malformed, HTTP.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from aggregator.app import create_app
from aggregator.config import Settings
from aggregator.samples.serving import serve

T = TypeVar("T")


class ThreadedApp:
    """``create_app(settings)`` served on 127.0.0.1 by a loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, settings: Callable[[], Coroutine[Any, Any, Settings]]) -> None:
        """Start the loop, build the settings on it (upstreams may start there), serve."""
        self.thread.start()
        self.call(self._start(settings))

    async def _start(self, settings: Callable[[], Coroutine[Any, Any, Settings]]) -> None:
        self.runner, _ = await serve(create_app(await settings()))
        self.port = self.runner.addresses[0][1]

    def stop(self, *closers: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Stop serving, run ``closers`` on the loop, then end the loop and its thread."""
        self.call(self._stop(closers))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _stop(self, closers: tuple[Callable[[], Coroutine[Any, Any, None]], ...]) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        for close in closers:
            await close()

    def exchange(self, request: bytes, timeout: float = 10, *, resets_fail: bool = False) -> bytes:
        """Send raw bytes, return everything answered until the server closes.

        Send ``Connection: close``; the server then closes once it has answered. A reset
        connection ends the answer too, unless ``resets_fail`` (then it raises).
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(request)
            chunks = []
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except ConnectionResetError:
                if resets_fail:
                    raise
        return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    """The status code of the first response in ``answer``; None when nothing came back."""
    if not answer:
        return None
    line = answer.split(b"\r\n", 1)[0].split()
    assert line[0].startswith(b"HTTP/1."), answer[:200]
    return int(line[1])


def body_of(answer: bytes) -> bytes:
    """The body of a single, non-chunked response."""
    return answer.partition(b"\r\n\r\n")[2]
