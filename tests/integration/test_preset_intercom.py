"""The intercom preset against an Intercom-shaped server (contact and conversation search;
the reference pages are cited in tests/support/vendors/intercom.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from aggregator.errors import FatalError
from aggregator.merge import to_scalar
from tests.support.vendors.base import flat_keys, open_preset
from tests.support.vendors.intercom import TOKEN, WORKSPACE, FakeIntercom, error_list, rate_headers

EMAIL = "o'brien+vip@example.com"


@pytest.fixture
async def intercom() -> AsyncIterator[FakeIntercom]:
    fake = FakeIntercom()
    fake.add_contact(
        "6650a1",
        EMAIL,
        name="Pat O'Brien",
        phone="+353 1 555",
        external_id="u-42",
        created_at=1700000000,
        signed_up_at=1700000100,
        last_seen_at=1717171717,
        location={"type": "location", "city": "Dublin", "country": "Ireland"},
        unsubscribed_from_emails=False,
    )
    for n, updated in enumerate([1717000000, 1717300000, 1717100000, 1717200000, 1716000000]):
        fake.add_conversation(
            f"c{n}",
            "6650a1",
            title=f"Question {n}",
            state="open",
            created_at=updated - 100,
            updated_at=updated,
        )
    await fake.start()
    yield fake
    await fake.stop()


async def connect(fake: FakeIntercom, session: Any, **extra: Any) -> Any:
    settings = {"type": "intercom", "token": TOKEN, "api_base": fake.url, "retries": 1, **extra}
    return await open_preset("intercom", settings, session)


async def test_contact_link_and_latest_conversations(intercom: FakeIntercom, session: Any) -> None:
    conn = await connect(intercom, session)

    outcome = await conn.fetch(EMAIL)

    assert outcome.status == "ok"
    fields = dict(outcome.fields)
    conversations = fields.pop("conversations")
    assert {k: to_scalar(v) for k, v in fields.items()} == {
        "id": "6650a1",
        "role": "user",
        "name": "Pat O'Brien",
        "phone": "+353 1 555",
        "external_id": "u-42",
        "created_at": "2023-11-14T22:13:20Z",
        "signed_up_at": "2023-11-14T22:15:00Z",
        "last_seen_at": "2024-05-31T16:08:37Z",
        "city": "Dublin",
        "country": "Ireland",
        "unsubscribed": False,
        "url": f"https://app.intercom.com/a/apps/{WORKSPACE}/users/6650a1/all-conversations",
    }
    assert conversations["count"] == 5
    assert [conversations[str(i)]["id"] for i in range(3)] == ["c1", "c3", "c2"]
    search = intercom.requests_to("/contacts/search")[0]
    assert search.headers["Intercom-Version"] == "2.11"
    assert {f["value"] for f in search.json()["query"]["value"]} == {EMAIL}
    conversation_search = intercom.requests_to("/conversations/search")[0].json()
    assert conversation_search["query"] == {
        "field": "contact_ids",
        "operator": "=",
        "value": "6650a1",
    }


async def test_the_address_as_sent_finds_a_mixed_case_contact(
    intercom: FakeIntercom, session: Any
) -> None:
    from aggregator.emails import parse_email

    intercom.contacts[0]["email"] = "O'Brien+VIP@example.com"
    conn = await connect(intercom, session)

    outcome = await conn.fetch(parse_email("O'Brien+VIP@example.com"))

    assert outcome.status == "ok"
    values = [
        f["value"] for f in intercom.requests_to("/contacts/search")[0].json()["query"]["value"]
    ]
    assert values == [EMAIL, "O'Brien+VIP@example.com"]


async def test_documented_fields_are_what_comes_back(intercom: FakeIntercom, session: Any) -> None:
    conn = await connect(intercom, session)

    outcome = await conn.fetch(EMAIL)

    assert flat_keys(outcome.fields) == flat_keys(conn.declared_shape())


async def test_a_user_is_preferred_over_a_lead_with_the_same_email(
    intercom: FakeIntercom, session: Any
) -> None:
    intercom.contacts.insert(
        0,
        {
            "type": "contact",
            "id": "lead1",
            "role": "lead",
            "email": EMAIL,
            "workspace_id": WORKSPACE,
        },
    )
    intercom.contacts[1]["email"] = EMAIL
    conn = await connect(intercom, session)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.fields["id"], outcome.fields["role"]) == ("6650a1", "user")


async def test_unknown_customer_adds_nothing(intercom: FakeIntercom, session: Any) -> None:
    conn = await connect(intercom, session)

    assert (await conn.fetch("nobody@example.com")).status == "not_found"
    assert intercom.requests_to("/conversations") == []


async def test_401_is_an_error_and_check_names_auth(intercom: FakeIntercom, session: Any) -> None:
    conn = await connect(intercom, session, token="wrong")

    assert (await conn.fetch(EMAIL)).status == "error"
    with pytest.raises(FatalError, match=r"^auth \(bearer\): HTTP 401"):
        await conn.check()


async def test_429_waits_for_the_rate_limit_reset(intercom: FakeIntercom, session: Any) -> None:
    intercom.fail_next(
        429,
        error_list("rate_limit_exceeded", "Exceeded rate limit of 1000 in 10_seconds"),
        headers=rate_headers(0, reset_in=0),
        path="/contacts",
    )
    conn = await connect(intercom, session, timeout=5.0)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.status, outcome.attempts) == ("ok", 2)


async def test_429_with_a_reset_beyond_the_deadline_is_not_waited(
    intercom: FakeIntercom, session: Any
) -> None:
    intercom.fail_next(
        429,
        error_list("rate_limit_exceeded", "Exceeded"),
        headers=rate_headers(0, reset_in=60),
        path="/contacts",
    )
    conn = await connect(intercom, session, timeout=2.0)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.status, len(intercom.requests_to("/contacts"))) == ("error", 1)


async def test_5xx_on_conversations_keeps_the_contact(intercom: FakeIntercom, session: Any) -> None:
    intercom.fail_next(
        500, error_list("server_error", "Server Error"), path="/conversations", times=2
    )
    conn = await connect(intercom, session, timeout=5.0)

    outcome = await conn.fetch(EMAIL)

    assert outcome.fields["conversations_error"] == "error"
    assert outcome.fields["name"] == "Pat O'Brien"
