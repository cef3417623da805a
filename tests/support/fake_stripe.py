"""The ``fake_stripe`` fixture: the package's Stripe-shaped server, empty, per test.

The server itself lives in ``aggregator.samples.stripe_api`` so that ``aggregator demo`` and
``bench/`` can use it. What only tests need is added here, in ``ScriptedStripe``:

- failures as Stripe sends them (``fail``, ``fail_429`` with or without ``Retry-After``,
  ``fail_500``, ``heal``), see https://docs.stripe.com/rate-limits and
  https://docs.stripe.com/error-low-level (``Stripe-Should-Retry``);
- hostile answers no real Stripe sends (``hostile``): a body far larger than any Stripe
  answer (declared or not), a gzip bomb, an endless body, a body trickling a byte at a
  time, a redirect to another origin, a body cut short by a dropped connection.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest_asyncio
from aiohttp import web

from aggregator.samples.stripe_api import (
    BASE_TIME,
    JSON,
    LIVE_DEFAULT,
    FakeStripe,
    Handler,
    start_fake_stripe,
)
from tests.support.net import started

__all__ = [
    "BASE_TIME",
    "JSON",
    "LIVE_DEFAULT",
    "Failure",
    "FakeStripe",
    "Hostile",
    "ScriptedStripe",
    "fake_stripe",
    "start_fake_stripe",
]

Hostile = Literal["huge", "huge_declared", "gzip_bomb", "endless", "trickle", "redirect", "cut"]
MIB = 1 << 20
BOMB_MIB = 256


@dataclass
class Failure:
    """An injected answer: ``times`` requests (None: every one) to ``path`` (None: any)."""

    status: int
    times: int | None
    headers: dict[str, str] = field(default_factory=dict)
    error_type: str = "api_error"
    path: str | None = None
    hostile: Hostile | None = None
    location: str = ""


@functools.cache
def gzip_bomb() -> bytes:
    """256 MiB of JSON whitespace, gzip-compressed to about 250 KB (made once per run)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b" " * MIB
    parts = [compressor.compress(b'{"object": "list", "data": [')]
    parts += [compressor.compress(chunk) for _ in range(BOMB_MIB)]
    parts.append(compressor.flush())
    return b"".join(parts)


class ScriptedStripe(FakeStripe):
    """The fake Stripe, with failures and hostile answers injected on request."""

    def __init__(self, key: str = "sk_test_fake") -> None:
        super().__init__(key)
        self.failures: list[Failure] = []
        self.hostile_bytes_sent = 0
        self.latency = 0.0
        self.compress = False
        self.compressed_answers = 0
        self.arrivals: list[tuple[str, int]] = []
        self._answered = 0

    def middlewares(self) -> list[Any]:
        """Counting and authorization first, then the injected answers."""
        return [self._record_rounds, *super().middlewares(), self._inject]

    def round_trips(self) -> int:
        """How many waves of requests arrived: a request sent only after an answer to an
        earlier one starts a new wave (exact when ``latency`` outlasts sending a wave)."""
        return len({answered for _, answered in self.arrivals})

    @web.middleware
    async def _record_rounds(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.arrivals.append((request.path, self._answered))
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            return await handler(request)
        finally:
            self._answered += 1

    def fail(
        self,
        status: int,
        times: int | None = 1,
        headers: dict[str, str] | None = None,
        error_type: str = "api_error",
        path: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests (None: all) to ``path`` (None: any) with an error."""
        self.failures.append(Failure(status, times, headers or {}, error_type, path))

    def fail_429(
        self, times: int = 1, retry_after: str | None = "0", path: str | None = None
    ) -> None:
        """Answer like Stripe's rate limiter, with ``Retry-After`` when given."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.fail(429, times, headers, "rate_limit_error", path)

    def fail_500(self, times: int | None = None, path: str | None = None) -> None:
        """Answer 500 to the next ``times`` requests, or to all of them."""
        self.fail(500, times, path=path)

    def hostile(
        self, kind: Hostile, times: int | None = None, path: str | None = None, location: str = ""
    ) -> None:
        """Answer the next ``times`` requests (None: all) with a hostile body or a redirect."""
        if kind == "gzip_bomb":
            gzip_bomb()  # made now (about a second of CPU), not while a client waits
        self.failures.append(Failure(200, times, path=path, hostile=kind, location=location))

    def heal(self) -> None:
        """Drop every injected answer."""
        self.failures.clear()

    @web.middleware
    async def _inject(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        failure = next((f for f in self.failures if f.path in (None, request.path)), None)
        if failure is None:
            response = await handler(request)
            accepted = request.headers.get("Accept-Encoding", "")
            if self.compress and "gzip" in accepted and isinstance(response, web.Response):
                response.enable_compression(web.ContentCoding.gzip)
                self.compressed_answers += 1
            return response
        if failure.times is not None:
            failure.times -= 1
            if failure.times <= 0:
                self.failures.remove(failure)
        return await self.injected(request, failure)

    async def injected(self, request: web.Request, failure: Failure) -> web.StreamResponse:
        """The answer ``failure`` describes: a Stripe error body, or a hostile answer."""
        if failure.hostile is not None:
            return await self._hostile(request, failure)
        body = {"error": {"type": failure.error_type, "message": "Injected failure."}}
        return web.json_response(body, status=failure.status, headers=failure.headers)

    async def _hostile(self, request: web.Request, failure: Failure) -> web.StreamResponse:
        kind = failure.hostile
        if kind == "redirect":
            raise web.HTTPFound(failure.location)
        if kind == "cut":
            response = web.StreamResponse(headers={"Content-Length": "1000"})
            await response.prepare(request)
            await response.write(b'{"object": "list", "da')
            assert request.transport is not None
            request.transport.close()
            return response
        if kind == "huge_declared":
            headers = {"Content-Length": str(512 * MIB), "Content-Type": "application/json"}
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            await self._send(response, b" " * MIB, count=1)
            return response
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if kind == "gzip_bomb":
            response.headers["Content-Encoding"] = "gzip"
            response.content_length = len(gzip_bomb())
            await response.prepare(request)
            await self._send(response, gzip_bomb(), count=1)
            return response
        await response.prepare(request)
        await response.write(b'{"object": "list", "data": [')
        if kind == "huge":
            await self._send(response, b"{}, " * (MIB // 4), count=512)
        elif kind == "endless":
            await self._send(response, b"{}, " * (MIB // 4), count=None)
        else:  # trickle: one byte every 50 ms, for ever
            await self._send(response, b" ", count=None, pause=0.05)
        return response

    async def _send(
        self, response: web.StreamResponse, chunk: bytes, count: int | None, pause: float = 0.0
    ) -> None:
        sent = 0
        try:
            while count is None or sent < count:
                await response.write(chunk)
                self.hostile_bytes_sent += len(chunk)
                sent += 1
                await asyncio.sleep(pause)
        except (ConnectionError, RuntimeError):
            return  # the client hung up: exactly what it should do


@pytest_asyncio.fixture
async def fake_stripe() -> AsyncIterator[ScriptedStripe]:
    """An empty fake Stripe account served on 127.0.0.1, with failure switches."""
    async with started(ScriptedStripe()) as fake:
        yield fake
