"""The shared part of every vendor fake: a real local server, recorded requests, scripted faults.

A fake subclasses ``VendorServer`` and adds its routes in ``routes()``. Tests read
``seen`` (every request as the server got it) and script faults with ``fail_next`` (the
next matching requests get that answer instead of the route's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from aggregator.samples.serving import serve

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return orjson.loads(self.body)

    def form(self) -> dict[str, str]:
        """The body as an urlencoded form."""
        return dict(parse_qsl(self.body.decode()))


@dataclass
class _Fault:
    path: str | None
    status: int
    body: Any
    headers: dict[str, str]
    delay: float
    exact: bool = False

    def matches(self, path: str) -> bool:
        """True when this fault answers a request to ``path``."""
        if self.path is None:
            return True
        return path == self.path if self.exact else path.startswith(self.path)


@dataclass
class VendorServer:
    """A local HTTP server on 127.0.0.1; ``url`` is set once started."""

    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    _faults: list[_Fault] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        """Add the vendor's routes."""
        raise NotImplementedError

    def fail_next(
        self,
        status: int,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
        path: str | None = None,
        exact: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests (whose path starts with ``path``, or is it when
        ``exact``) with this instead."""
        for _ in range(times):
            self._faults.append(_Fault(path, status, body, dict(headers or {}), delay, exact))

    def requests_to(self, path: str) -> list[Seen]:
        """The recorded requests whose path starts with ``path``."""
        return [seen for seen in self.seen if seen.path.startswith(path)]

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.raw_path,
                dict(request.query),
                dict(request.headers),
                await request.read(),
            )
        )
        for fault in self._faults:
            if fault.matches(request.path):
                self._faults.remove(fault)
                await asyncio.sleep(fault.delay)
                if isinstance(fault.body, bytes):
                    return web.Response(body=fault.body, status=fault.status, headers=fault.headers)
                return web.json_response(fault.body, status=fault.status, headers=fault.headers)
        return await handler(request)

    async def start(self) -> str:
        """Serve on a free loopback port; returns the base URL."""
        app = web.Application(middlewares=[self._record])
        self.routes(app)
        self._runner, self.url = await serve(app)
        return self.url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Scripted(VendorServer):
    """Every path answered by one handler the test gives (for the generic rest tests)."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler

    def routes(self, app: web.Application) -> None:
        """One catch-all route."""
        app.router.add_route("*", "/{tail:.*}", self.handler)


def reply(body: Any = None, status: int = 200, **headers: str) -> Handler:
    """A handler answering ``body`` as JSON (bytes as they are) with ``status``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if isinstance(body, bytes):
            return web.Response(body=body, status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    return handle


async def open_preset(name: str, settings: dict[str, Any], session: Any) -> Any:
    """Build and open the connector ``settings["type"]`` names (through the entry points)."""
    from aggregator.registry import get_connector_type

    kind = get_connector_type(settings["type"])
    connector = kind(name, kind.settings_model.model_validate(settings))
    await connector.open(session)
    return connector


def flat_keys(fields: Any) -> set[str]:
    """The keys a connector's fields flatten to (before the prefix)."""
    from aggregator.merge import flatten

    return set(flatten(fields, max_list_items=50))
