"""Run the real proxy app on a loopback port for a test and talk to it over HTTP."""

from __future__ import annotations

import textwrap
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from aggregator.app import create_app
from aggregator.config import Settings, parse_settings
from aggregator.samples.serving import serve

TOKEN = "test-token-0123456789"


def settings_from(
    connectors: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    cache_url: str = "memory://",
    env: Mapping[str, str] | None = None,
    **sections: Mapping[str, Any],
) -> Settings:
    """Settings parsed from YAML, as an operator would write them."""
    document: dict[str, Any] = {
        "server": {"deadline": 1.0},
        "auth": {"api_tokens": [TOKEN, "second-token-abcdefgh"]},
        "cache": {"url": cache_url},
        "connectors": dict(connectors or {}),
    }
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    text = yaml.safe_dump(document, sort_keys=False)
    return parse_settings(textwrap.dedent(text), source="test.yaml", env=dict(env or {}))


class Proxy:
    """A running proxy: its base URL and a client session to query it."""

    def __init__(self, url: str, session: aiohttp.ClientSession, app: web.Application) -> None:
        self.url = url
        self.session = session
        self.app = app

    async def profile(
        self, email: str | None, token: str | None = TOKEN, **extra: str
    ) -> tuple[int, dict[str, Any]]:
        """GET the profile; (status, decoded JSON body)."""
        params = dict(extra)
        if email is not None:
            params["email"] = email
        if token is not None:
            params["api_token"] = token
        async with self.session.get(f"{self.url}/profile", params=params) as response:
            return response.status, await response.json(content_type=None)

    async def get(self, path: str) -> tuple[int, str]:
        """GET any path; (status, text)."""
        async with self.session.get(f"{self.url}{path}") as response:
            return response.status, await response.text()


@asynccontextmanager
async def running_proxy(
    settings: Settings, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[Proxy]:
    """Start the app on 127.0.0.1:<free port>, yield a Proxy, shut down cleanly.

    ``clock`` dates cached profiles: a FakeClock lets a test age them without sleeping.
    """
    app = create_app(settings, clock=clock)
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            yield Proxy(url, session, app)
    finally:
        await runner.cleanup()
