"""The zendesk preset against a Zendesk-shaped server (the reference pages are cited in
tests/support/vendors/zendesk.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from aggregator.errors import FatalError
from tests.support.vendors.base import flat_keys, open_preset
from tests.support.vendors.zendesk import AGENT, TOKEN, FakeZendesk

EMAIL = "o'brien+vip@example.com"


def user(user_id: int, email: str, **values: Any) -> dict[str, Any]:
    return {
        "id": user_id,
        "url": f"https://acme.zendesk.com/api/v2/users/{user_id}.json",
        "email": email,
        "name": values.pop("name", "Someone"),
        "role": "end-user",
        **values,
    }


@pytest.fixture
async def zendesk() -> AsyncIterator[FakeZendesk]:
    fake = FakeZendesk()
    fake.users += [
        user(11, "joann.o'brien+vip@example.com.au", name="JoAnn"),
        user(
            12,
            "O'Brien+VIP@Example.com",
            name="Pat O'Brien",
            organization_id=900,
            phone="+353 1 555",
            time_zone="Dublin",
            locale="en-IE",
            tags=["vip"],
            created_at="2023-01-01T00:00:00Z",
            last_login_at="2024-05-01T00:00:00Z",
            suspended=False,
        ),
    ]
    for n in range(5):
        fake.tickets.append(
            {
                "id": 100 + n,
                "requester_id": 12,
                "subject": f"Issue {n}",
                "status": "open",
                "priority": "normal",
                "updated_at": f"2024-0{n + 1}-02T00:00:00Z",
            }
        )
    await fake.start()
    yield fake
    await fake.stop()


async def connect(fake: FakeZendesk, session: Any, **extra: Any) -> Any:
    settings = {
        "type": "zendesk",
        "subdomain": "acme",
        "email": AGENT,
        "token": TOKEN,
        "api_base": fake.url,
        "retries": 1,
        **extra,
    }
    return await open_preset("zendesk", settings, session)


async def test_user_narrowed_to_the_exact_email_with_latest_tickets(
    zendesk: FakeZendesk, session: Any
) -> None:
    conn = await connect(zendesk, session)

    outcome = await conn.fetch(EMAIL)

    assert outcome.status == "ok"
    fields = dict(outcome.fields)
    tickets = fields.pop("tickets")
    assert fields == {
        "id": 12,
        "name": "Pat O'Brien",
        "role": "end-user",
        "organization_id": 900,
        "phone": "+353 1 555",
        "time_zone": "Dublin",
        "locale": "en-IE",
        "tags": ["vip"],
        "created_at": "2023-01-01T00:00:00Z",
        "last_login_at": "2024-05-01T00:00:00Z",
        "suspended": False,
        "url": "https://acme.zendesk.com/agent/users/12",
    }
    assert tickets["count"] == 5
    assert tickets["0"] == {
        "id": 104,
        "subject": "Issue 4",
        "status": "open",
        "priority": "normal",
        "updated_at": "2024-05-02T00:00:00Z",
        "url": "https://acme.zendesk.com/agent/tickets/104",
    }
    search = zendesk.requests_to("/api/v2/users/search.json")[0]
    assert search.query == {"query": EMAIL}
    assert "%2B" in search.raw_path
    requested = zendesk.requests_to("/api/v2/users/12/tickets")[0].query
    assert requested == {"sort_by": "updated_at", "sort_order": "desc", "per_page": "3"}


async def test_documented_fields_are_what_comes_back(zendesk: FakeZendesk, session: Any) -> None:
    conn = await connect(zendesk, session)

    outcome = await conn.fetch(EMAIL)

    assert flat_keys(outcome.fields) == flat_keys(conn.declared_shape())


async def test_a_partial_match_alone_is_an_unknown_customer(
    zendesk: FakeZendesk, session: Any
) -> None:
    conn = await connect(zendesk, session)

    outcome = await conn.fetch("brien+vip@example.com")

    assert (outcome.status, outcome.fields) == ("not_found", None)
    assert zendesk.requests_to("/api/v2/users/1") == []


async def test_several_exact_matches_take_the_first(zendesk: FakeZendesk, session: Any) -> None:
    zendesk.users.append(user(13, EMAIL, name="Duplicate"))
    conn = await connect(zendesk, session)

    assert (await conn.fetch(EMAIL)).fields["id"] == 12


async def test_401_is_an_error_and_check_names_auth(zendesk: FakeZendesk, session: Any) -> None:
    conn = await connect(zendesk, session, token="wrong")

    assert (await conn.fetch(EMAIL)).status == "error"
    with pytest.raises(FatalError, match=r"^auth \(basic\): HTTP 401"):
        await conn.check()


async def test_429_honours_retry_after(zendesk: FakeZendesk, session: Any) -> None:
    zendesk.fail_next(
        429,
        b"Too Many Requests",
        headers={"Retry-After": "0", "X-Rate-Limit": "700", "X-Rate-Limit-Remaining": "0"},
    )
    conn = await connect(zendesk, session, timeout=5.0)

    assert (await conn.fetch(EMAIL)).attempts == 2


async def test_429_on_tickets_beyond_the_deadline_keeps_the_user(
    zendesk: FakeZendesk, session: Any
) -> None:
    zendesk.fail_next(
        429, b"Too Many Requests", headers={"Retry-After": "93"}, path="/api/v2/users/12"
    )
    conn = await connect(zendesk, session, timeout=2.0)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.fields["tickets_error"], outcome.fields["id"]) == ("error", 12)


async def test_5xx_is_retried_then_an_error(zendesk: FakeZendesk, session: Any) -> None:
    zendesk.fail_next(503, b"<html>maintenance</html>", times=2)
    conn = await connect(zendesk, session, timeout=5.0)

    assert (await conn.fetch(EMAIL)).status == "error"
