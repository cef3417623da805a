"""OAuth2 for rest connectors: one token for a burst, cached until shortly before expiry (an
injected clock, no sleeps), refreshed once on a 401, never logged, instance_url honoured.

The token server speaks RFC 6749 (sections 4.4 client credentials, 6 refresh, 5.1/5.2
answers); the API behind it answers 401 to any token it did not issue or has revoked.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from aggregator.errors import FatalError
from connectors.oauth2 import OAuth2Settings, TokenSource
from connectors.rest import RestConnector, RestSettings
from tests.support.vendors.base import VendorServer

CLIENT_ID = "client-abc"


@dataclass
class TokenServer(VendorServer):
    """``POST /oauth/token`` and an API at ``GET /api/contacts?email=`` (or on ``instance``)."""

    secret: str = field(default_factory=lambda: f"cs-{uuid.uuid4().hex}")
    refresh: str = field(default_factory=lambda: f"rt-{uuid.uuid4().hex}")
    expires_in: int | None = 3600
    instance_url: str | None = None
    token_delay: float = 0.0
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)

    def routes(self, app: web.Application) -> None:
        """Token endpoint and one API route."""
        app.router.add_post("/oauth/token", self.token)
        app.router.add_get("/api/contacts", self.contacts)

    async def token(self, request: web.Request) -> web.Response:
        """Issue a token for valid client credentials or refresh token."""
        await asyncio.sleep(self.token_delay)
        form = await request.post()
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != self.secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = form.get("grant_type")
        if grant == "refresh_token" and form.get("refresh_token") != self.refresh:
            return web.json_response({"error": "invalid_grant"}, status=400)
        if grant not in ("client_credentials", "refresh_token"):
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = f"at-{uuid.uuid4().hex}"
        self.issued.append(token)
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        if self.instance_url is not None:
            answer["instance_url"] = self.instance_url
        if grant == "refresh_token":
            self.refresh = f"rt-{uuid.uuid4().hex}"
            answer["refresh_token"] = self.refresh
        return web.json_response(answer)

    async def contacts(self, request: web.Request) -> web.Response:
        """A contact for any email, to a valid bearer token."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.issued or token in self.revoked:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"data": [{"email": request.query["email"], "plan": "Pro"}]})


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[TokenServer]:
    fake = TokenServer()
    await fake.start()
    yield fake
    await fake.stop()


def oauth(server: TokenServer, **extra: Any) -> dict[str, Any]:
    return {
        "token_url": f"{server.url}/oauth/token",
        "client_id": CLIENT_ID,
        "client_secret": server.secret,
        **extra,
    }


async def connector(
    server: TokenServer, session: aiohttp.ClientSession, clock: Clock, **extra: Any
) -> RestConnector:
    settings = RestSettings.model_validate(
        {
            "type": "rest",
            "url": f"{server.url}/api/contacts?email={{email}}",
            "select": "data[0]",
            "auth": {"oauth2": oauth(server, **extra)},
            "timeout": 5.0,
            "retries": 0,
        }
    )
    conn = RestConnector("crm", settings)
    assert conn.auth.tokens is not None
    conn.auth.tokens.clock = clock
    await conn.open(session)
    return conn


async def test_a_burst_of_fetches_shares_one_token_request(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    server.token_delay = 0.2
    conn = await connector(server, session, Clock())

    outcomes = await asyncio.gather(*(conn.fetch(f"u{i}@example.com") for i in range(20)))

    assert {o.status for o in outcomes} == {"ok"}
    assert len(server.requests_to("/oauth/token")) == 1
    assert len(server.requests_to("/api/contacts")) == 20


async def test_the_token_is_kept_until_shortly_before_it_expires(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    conn = await connector(server, session, clock)

    await conn.fetch("a@example.com")
    clock.now += 3500  # 100 s left of 3600: still used
    await conn.fetch("a@example.com")
    assert len(server.requests_to("/oauth/token")) == 1
    clock.now += 50  # 50 s left: inside the refresh margin
    await conn.fetch("a@example.com")

    assert len(server.requests_to("/oauth/token")) == 2
    tokens = [s.headers["Authorization"] for s in server.requests_to("/api/contacts")]
    assert tokens[0] == tokens[1] != tokens[2]


async def test_an_answer_without_expires_in_is_kept_for_an_hour(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    server.expires_in = None
    clock = Clock()
    conn = await connector(server, session, clock)

    await conn.fetch("a@example.com")
    clock.now += 3000
    await conn.fetch("a@example.com")

    assert len(server.requests_to("/oauth/token")) == 1


async def test_a_401_fetches_a_new_token_once_and_retries(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    conn = await connector(server, session, Clock())
    await conn.fetch("a@example.com")
    server.revoked.update(server.issued)

    outcome = await conn.fetch("a@example.com")

    assert (outcome.status, outcome.fields) == ("ok", {"email": "a@example.com", "plan": "Pro"})
    assert len(server.requests_to("/oauth/token")) == 2


async def test_a_token_refused_twice_is_an_error_after_one_retry(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    conn = await connector(server, session, Clock())
    server.fail_next(401, {"error": "invalid_token"}, path="/api/contacts", times=5)

    outcome = await conn.fetch("a@example.com")

    assert (outcome.status, outcome.detail) == ("error", "FatalError")
    assert len(server.requests_to("/api/contacts")) == 2
    assert len(server.requests_to("/oauth/token")) == 2


async def test_refresh_token_grant_sends_it_and_keeps_the_rotated_one(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    first_refresh = server.refresh
    conn = await connector(
        server, session, clock, grant="refresh_token", refresh_token=first_refresh
    )

    assert (await conn.fetch("a@example.com")).status == "ok"
    clock.now += 4000
    assert (await conn.fetch("a@example.com")).status == "ok"

    forms = [s.form() for s in server.requests_to("/oauth/token")]
    assert [f["grant_type"] for f in forms] == ["refresh_token", "refresh_token"]
    assert forms[0]["refresh_token"] == first_refresh
    assert forms[1]["refresh_token"] != first_refresh  # the rotated one


async def test_instance_url_from_the_token_answer_is_the_api_host(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    api = TokenServer(secret=server.secret)
    await api.start()
    try:
        server.instance_url = api.url
        api.issued = server.issued  # the API accepts what the token server issued
        settings = RestSettings.model_validate(
            {
                "type": "rest",
                "url": "{instance_url}/api/contacts?email={email}",
                "select": "data[0]",
                "auth": {"oauth2": oauth(server)},
                "link": "{instance_url}/lightning/r/Contact/{plan}/view",
            }
        )
        conn = RestConnector("sf", settings)
        await conn.open(session)

        outcome = await conn.fetch("o'brien+vip@example.com")

        assert outcome.status == "ok"
        assert outcome.fields is not None
        assert outcome.fields["url"] == f"{api.url}/lightning/r/Contact/Pro/view"
        assert server.requests_to("/api/") == []
        assert api.requests_to("/api/contacts")[0].query == {"email": "o'brien+vip@example.com"}
    finally:
        await api.stop()


async def test_a_refused_client_is_an_error_that_names_no_secret(
    server: TokenServer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await connector(server, session, Clock(), client_secret="wrong-secret-xyz")

    with caplog.at_level(logging.DEBUG):
        outcome = await conn.fetch("a@example.com")
        with pytest.raises(FatalError) as info:
            await conn.check()

    assert (outcome.status, outcome.detail) == ("error", "FatalError")
    assert str(info.value) == (
        "auth (oauth2): OAuth token request refused: HTTP 401 (invalid_client)"
    )
    assert "wrong-secret-xyz" not in caplog.text
    assert server.requests_to("/api/") == []


async def test_tokens_and_secrets_never_reach_the_log(
    server: TokenServer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    with caplog.at_level(logging.DEBUG):
        conn = await connector(
            server, session, clock, grant="refresh_token", refresh_token=server.refresh
        )
        first_refresh = server.refresh
        await conn.fetch("a@example.com")
        server.revoked.update(server.issued)
        await conn.fetch("a@example.com")
        server.fail_next(500, {"error": "server_error"}, path="/oauth/token")
        clock.now += 10_000
        failed = await conn.fetch("a@example.com")
        await conn.check()

    secrets = [server.secret, first_refresh, server.refresh, *server.issued]
    written = caplog.text + repr([r.__dict__ for r in caplog.records]) + failed.detail
    for secret in secrets:
        assert secret not in written
    assert conn.auth.tokens is not None
    assert "at-" not in repr(conn.auth.tokens._token)


def test_an_http_instance_url_is_refused_for_an_https_token_url() -> None:
    source = TokenSource(
        OAuth2Settings(
            token_url="https://login.example.com/t", client_id="i", client_secret=SecretStr("s")
        )
    )
    with pytest.raises(Exception, match="not https"):
        source._token_from({"access_token": "x", "instance_url": "http://evil.example"})
