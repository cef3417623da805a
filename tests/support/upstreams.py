"""A local CRM-like HTTP upstream whose behaviour each test scripts."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.support.net import serve_app


@dataclass
class FakeCrm:
    """Contacts by email; per-email delays and failures; a count of calls per email."""

    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    fail_with: int | None = None
    default_delay: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        """GET /contacts?email=...: {"data": [contact]} or an empty list."""
        email = request.query.get("email", "")
        self.calls[email] += 1
        await asyncio.sleep(self.delay.get(email, self.default_delay))
        if self.fail_with is not None:
            return web.json_response({"error": "boom"}, status=self.fail_with)
        contact = self.contacts.get(email)
        return web.json_response({"data": [contact] if contact else []})

    @property
    def template(self) -> str:
        """The URL template a rest connector uses for this upstream."""
        return f"{self.url}/contacts?email={{email}}"


async def start_crm(crm: FakeCrm) -> web.AppRunner:
    """Serve ``crm`` on 127.0.0.1 on a free port; set ``crm.url``."""
    app = web.Application()
    app.router.add_get("/contacts", crm.handle)
    runner, crm.url = await serve_app(app)
    return runner


@pytest.fixture
async def crm() -> AsyncIterator[FakeCrm]:
    """A fresh fake CRM with two known contacts."""
    fake = FakeCrm(
        contacts={
            "ada@example.com": {"plan": {"name": "Pro"}, "tags": ["vip", "beta"], "seats": 12},
            "bob@example.com": {"plan": {"name": "Free"}, "tags": [], "seats": 1},
        }
    )
    runner = await start_crm(fake)
    yield fake
    await runner.cleanup()


@pytest.fixture
async def slow_crm() -> AsyncIterator[FakeCrm]:
    """A second fake CRM that answers every request after 10 seconds."""
    fake = FakeCrm(contacts={"ada@example.com": {"score": 3}}, default_delay=10.0)
    runner = await start_crm(fake)
    yield fake
    await runner.cleanup()
