"""Fixtures of the rest connector tests: ``serve`` starts local upstreams each answered by a
handler the test gives (``Scripted``); ``make`` opens ``rest`` connectors on the test's
session. Both clean up after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from connectors.rest import RestConnector, RestSettings
from tests.support.vendors.base import Handler, Scripted

Start = Callable[[Handler], Awaitable[Scripted]]
Make = Callable[..., Awaitable[RestConnector]]


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    """``await serve(handler)``: a started ``Scripted`` upstream, stopped after the test."""
    servers: list[Scripted] = []

    async def start(handler: Handler) -> Scripted:
        server = Scripted(handler)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def make(session: aiohttp.ClientSession) -> AsyncIterator[Make]:
    """``await make(**settings)``: an opened ``rest`` connector named crm, closed after."""
    made: list[RestConnector] = []

    async def build(**settings: Any) -> RestConnector:
        conn = RestConnector("crm", RestSettings(type="rest", **settings))
        await conn.open(session)
        made.append(conn)
        return conn

    yield build
    for conn in made:
        await conn.close()
