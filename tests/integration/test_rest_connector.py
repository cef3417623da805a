"""The rest connector against a real local aiohttp upstream, through the public fetch()."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from pydantic import ValidationError

from aggregator.errors import FatalError
from connectors.rest import RestConnector, RestSettings, parse_retry_after
from tests.support.net import free_port
from tests.support.scripted import Make

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """One request as the upstream saw it."""

    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A local HTTP server: every path goes to ``handler`` (no routing); requests are recorded."""

    handler: Handler
    server: RawTestServer | None = None
    seen: list[Seen] = field(default_factory=list)

    def url(self, path_and_query: str) -> str:
        """An absolute URL template on this server (``{email}`` left in place)."""
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}{path_and_query}"

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
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
        return await self.handler(request)


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[Handler], Awaitable[Upstream]]]:
    servers: list[RawTestServer] = []

    async def start(handler: Handler) -> Upstream:
        up = Upstream(handler)
        up.server = RawTestServer(up._dispatch, host="127.0.0.1", port=0)
        await up.server.start_server()
        servers.append(up.server)
        return up

    yield start
    for server in servers:
        await server.close()


def answer(body: Any = None, status: int = 200, **headers: str) -> Handler:
    """A handler answering ``body`` as JSON (or raw bytes) with ``status``."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if isinstance(body, bytes):
            return web.Response(body=body, status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    return handle


CONTACT = {"id": 7, "plan": {"name": "Pro", "seats": 5}, "tags": ["vip", "beta"]}


async def test_found_contact_selected(upstream: Any, make: Make) -> None:
    up = await upstream(answer({"data": [CONTACT, {"id": 8}], "meta": {"total": 2}}))
    conn = await make(url=up.url("/contacts?email={email}"), select="data[0]")

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.detail) == ("ok", "")
    assert outcome.fields == CONTACT
    assert up.seen[0].query == {"email": "ann@example.com"}


async def test_fields_mapping_picks_and_renames(upstream: Any, make: Make) -> None:
    up = await upstream(answer({"data": [CONTACT]}))
    conn = await make(
        url=up.url("/contacts?email={email}"),
        select="data[0]",
        fields={"plan": "plan.name", "seats": "plan.seats", "first_tag": "tags[0]", "x": "nope"},
    )

    outcome = await conn.fetch("ann@example.com")

    assert outcome.status == "ok"
    assert outcome.fields == {"plan": "Pro", "seats": 5, "first_tag": "vip"}


async def test_fields_mapping_may_pick_from_a_list(upstream: Any, make: Make) -> None:
    up = await upstream(answer({"orders": [{"n": 1}, {"n": 2}]}))
    conn = await make(
        url=up.url("/o?email={email}"), select="orders", fields={"orders": "length(@)"}
    )

    assert (await conn.fetch("ann@example.com")).fields == {"orders": 2}


async def test_selected_scalar_without_fields_is_an_error(upstream: Any, make: Make) -> None:
    up = await upstream(answer({"data": [{"name": "Ann"}]}))
    conn = await make(url=up.url("/c?email={email}"), select="data[0].name")

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.detail) == ("error", "FatalError")


async def test_404_is_an_unknown_customer(upstream: Any, make: Make) -> None:
    up = await upstream(answer({"error": "no such contact"}, status=404))
    conn = await make(url=up.url("/c?email={email}"), circuit_failures=1)

    outcome = await conn.fetch("nobody@example.com")

    assert (outcome.status, outcome.fields, outcome.detail) == ("not_found", None, "")
    assert not outcome.failed
    assert conn.circuit.state == "closed"


async def test_custom_not_found_status(upstream: Any, make: Make) -> None:
    up = await upstream(answer({"error": "gone"}, status=410))
    conn = await make(url=up.url("/c?email={email}"), not_found_statuses=[404, 410])

    assert (await conn.fetch("nobody@example.com")).status == "not_found"


@pytest.mark.parametrize(
    ("body", "select"),
    [({"data": []}, "data[0]"), ({"data": [{}]}, "data[0]"), ({"data": []}, "data"), (None, None)],
)
async def test_empty_selection_is_not_found(
    upstream: Any, make: Make, body: Any, select: str | None
) -> None:
    up = await upstream(answer(body))
    conn = await make(url=up.url("/c?email={email}"), select=select)

    outcome = await conn.fetch("nobody@example.com")

    assert (outcome.status, outcome.fields) == ("not_found", None)


async def test_500_is_retried_then_an_error(upstream: Any, make: Make) -> None:
    up = await upstream(answer({"error": "boom"}, status=500))
    conn = await make(url=up.url("/c?email={email}"), retries=2, timeout=5.0)

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.fields, outcome.detail) == ("error", None, "RetriableError")
    assert len(up.seen) == 3
    assert outcome.attempts == 3


async def test_429_with_retry_after_then_ok(upstream: Any, make: Make) -> None:
    replies = [answer({"error": "slow down"}, status=429, **{"Retry-After": "0"}), answer(CONTACT)]

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        return await replies.pop(0)(request)

    up = await upstream(handle)
    conn = await make(url=up.url("/c?email={email}"), retries=1)

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.fields, outcome.attempts) == ("ok", CONTACT, 2)
    assert len(up.seen) == 2


async def test_retry_after_too_long_for_the_budget_is_not_waited(upstream: Any, make: Make) -> None:
    up = await upstream(answer({}, status=503, **{"Retry-After": "120"}))
    conn = await make(url=up.url("/c?email={email}"), retries=3, timeout=1.0)

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, len(up.seen)) == ("error", 1)


async def test_slow_upstream_times_out(upstream: Any, make: Make) -> None:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.sleep(10)
        return web.json_response(CONTACT)

    up = await upstream(handle)
    conn = await make(url=up.url("/c?email={email}"), timeout=0.3)

    started = time.monotonic()
    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.fields) == ("timeout", None)
    assert time.monotonic() - started < 2.0  # the upstream would have taken 10 s


@pytest.mark.parametrize("body", [b"<html>Sign in</html>", b"", b'{"data": ['])
async def test_body_that_is_not_json_is_an_error(upstream: Any, make: Make, body: bytes) -> None:
    up = await upstream(answer(body))
    conn = await make(url=up.url("/c?email={email}"), retries=3)

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.detail) == ("error", "FatalError")
    assert len(up.seen) == 1  # fatal: not retried


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_oversize_body_is_cut_short(upstream: Any, make: Make, declare_length: bool) -> None:
    chunk, chunks = b" " * 65536, 80  # 5 MiB of JSON whitespace
    progress: dict[str, int | bool] = {"sent": 0, "finished": False}
    handler_done = asyncio.Event()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if declare_length:
            resp.content_length = len(chunk) * chunks + 2
        try:
            await resp.prepare(request)
            for _ in range(chunks):
                await resp.write(chunk)
                progress["sent"] = int(progress["sent"]) + 1
                await asyncio.sleep(0.005)
            await resp.write(b"{}")
            progress["finished"] = True
        finally:
            handler_done.set()
        return resp

    up = await upstream(handle)
    conn = await make(url=up.url("/c?email={email}"), max_body_bytes=65536, timeout=10.0)

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.detail) == ("error", "FatalError")
    await asyncio.wait_for(handler_done.wait(), 5)
    assert progress["finished"] is False
    assert int(progress["sent"]) < chunks


async def test_connection_refused_is_unavailable(make: Make) -> None:
    conn = await make(url=f"http://127.0.0.1:{free_port()}/c?email={{email}}")

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.fields) == ("unavailable", None)


async def test_headers_reach_the_upstream(upstream: Any, make: Make) -> None:
    up = await upstream(answer(CONTACT))
    conn = await make(
        url=up.url("/c?email={email}"),
        headers={"Authorization": "Bearer s3cret-token", "X-Tenant": "acme"},
    )

    assert (await conn.fetch("ann@example.com")).status == "ok"
    assert up.seen[0].headers["Authorization"] == "Bearer s3cret-token"
    assert up.seen[0].headers["X-Tenant"] == "acme"


async def test_post_sends_the_email_as_json(upstream: Any, make: Make) -> None:
    up = await upstream(answer({"contact": CONTACT}))
    conn = await make(url=up.url("/search"), method="POST", select="contact")

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.fields) == ("ok", CONTACT)
    assert (up.seen[0].method, up.seen[0].path) == ("POST", "/search")
    assert up.seen[0].body == b'{"email": "ann@example.com"}'


CRAFTED = [
    "a/../b@x.com",
    "a?x=1#f@x.com",
    "a%2Fb@x.com",
    "a\r\nX: y@x.com",
    "üñí@x.com",
    "a@b.com&api_token=1",
    "a+b {c}@x.com",
]


@pytest.mark.parametrize("address", CRAFTED)
async def test_crafted_email_stays_one_query_value(upstream: Any, make: Make, address: str) -> None:
    up = await upstream(answer(CONTACT))
    conn = await make(url=up.url("/api/v1/contacts?email={email}&fmt={json}"))

    assert (await conn.fetch(address)).status == "ok"
    seen = up.seen[0]
    assert seen.path == "/api/v1/contacts"
    assert seen.query == {"email": address, "fmt": "{json}"}
    assert "X" not in seen.headers


@pytest.mark.parametrize("address", CRAFTED)
async def test_crafted_email_stays_one_path_segment(
    upstream: Any, make: Make, address: str
) -> None:
    up = await upstream(answer(CONTACT))
    conn = await make(url=up.url("/contacts/{email}/profile"))

    assert (await conn.fetch(address)).status == "ok"
    segments = up.seen[0].raw_path.split("/")
    assert segments[:2] == ["", "contacts"]
    assert segments[3:] == ["profile"]
    assert unquote(segments[2]) == address
    assert up.seen[0].query == {}


async def test_circuit_opens_and_then_answers_without_upstream(upstream: Any, make: Make) -> None:
    up = await upstream(answer({"error": "down"}, status=503))
    conn = await make(url=up.url("/c?email={email}"), retries=0, circuit_failures=3)

    failures = [await conn.fetch("ann@example.com") for _ in range(3)]
    after = await conn.fetch("ann@example.com")

    assert [o.status for o in failures] == ["error"] * 3
    assert (after.status, after.detail, after.attempts) == ("unavailable", "circuit open", 0)
    assert len(up.seen) == 3


async def test_check_names_an_auth_failure_without_the_secret(upstream: Any, make: Make) -> None:
    up = await upstream(answer({"error": "bad token"}, status=401))
    conn = await make(
        url=up.url("/c?email={email}"), headers={"Authorization": "Bearer s3cret-token"}
    )

    with pytest.raises(FatalError, match="401") as info:
        await conn.check()
    assert "s3cret" not in str(info.value)


async def test_check_accepts_an_unknown_probe_email(upstream: Any, make: Make) -> None:
    up = await upstream(answer({"error": "no such contact"}, status=404))
    conn = await make(url=up.url("/c?email={email}"))

    await conn.check()
    assert len(up.seen) == 1


def test_retry_after_header_forms() -> None:
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert 50 < (parse_retry_after(in_a_minute) or 0) <= 60


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"url": "ftp://crm.example.com/c?email={email}"}, "http"),
        ({"url": "crm.example.com/c?email={email}"}, "http"),
        ({"url": "https://crm.example.com/contacts"}, "{email}"),
        ({"url": "https://{email}.example.com/c"}, "host"),
        ({"url": "https://crm.example.com/c?email={email}", "select": "data[0"}, "JMESPath"),
        ({"url": "https://crm.example.com/c?email={email}", "fields": {"a": "b.["}}, "JMESPath"),
        ({"url": "https://crm.example.com/c?email={email}", "headers": {"A": "x\r\nB: y"}}, "A"),
        ({"url": "https://crm.example.com/c?email={email}", "type": "stripe"}, "type"),
    ],
)
def test_settings_reject_bad_config(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem.replace("[", r"\[")):
        RestSettings(**{"type": "rest", **settings})


def test_settings_accept_the_contract_example() -> None:
    settings = RestSettings(
        type="rest",
        url="https://crm.example.com/api/contacts?email={email}",
        headers={"Authorization": "Bearer abc"},
        select="data[0]",
        timeout=2.0,
    )
    conn = RestConnector("crm", settings)
    assert str(conn.request_url("a/b@x.com")) == (
        "https://crm.example.com/api/contacts?email=a%2Fb%40x.com"
    )
