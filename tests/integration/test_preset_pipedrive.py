"""The pipedrive preset against a Pipedrive-shaped server (API v1; the reference pages are
cited in tests/support/vendors/pipedrive.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from aggregator.errors import FatalError
from tests.support.vendors.base import flat_keys, open_preset
from tests.support.vendors.pipedrive import TOKEN, FakePipedrive, rate_headers

EMAIL = "o'brien+vip@example.com"


@pytest.fixture
async def pipedrive() -> AsyncIterator[FakePipedrive]:
    fake = FakePipedrive()
    fake.persons[7] = {
        "name": "Pat O'Brien",
        "emails": ["O'Brien+VIP@example.com"],
        "phones": ["+353 1 555"],
        "organization": {"id": 3, "name": "Acme", "address": None},
        "last_activity_date": "2024-05-01",
    }
    for n in range(5):
        fake.deals.append(
            {
                "id": 50 + n,
                "person_id": 7,
                "title": f"Deal {n}",
                "value": 1000 * (n + 1),
                "currency": "EUR",
                "status": "open" if n < 4 else "won",
                "stage_id": 2,
                "add_time": f"2024-0{n + 1}-01 10:00:00",
            }
        )
    await fake.start()
    yield fake
    await fake.stop()


async def connect(fake: FakePipedrive, session: Any, **extra: Any) -> Any:
    settings = {
        "type": "pipedrive",
        "company_domain": "acme",
        "token": TOKEN,
        "api_base": fake.url + "/api/v1",
        "retries": 1,
        **extra,
    }
    return await open_preset("pipedrive", settings, session)


async def test_person_owner_counts_and_open_deals(pipedrive: FakePipedrive, session: Any) -> None:
    conn = await connect(pipedrive, session)

    outcome = await conn.fetch(EMAIL)

    assert outcome.status == "ok"
    fields = dict(outcome.fields)
    deals = fields.pop("deals")
    assert fields == {
        "id": 7,
        "name": "Pat O'Brien",
        "organization": "Acme",
        "phones": ["+353 1 555"],
        "owner": "Sam Rivera",
        "open_deals_count": 4,
        "won_deals_count": 1,
        "last_activity_date": "2024-05-01",
        "url": "https://acme.pipedrive.com/person/7",
    }
    assert deals["count"] == 4
    assert deals["0"] == {
        "title": "Deal 3",
        "value": "€4000.00",
        "stage_id": 2,
        "add_time": "2024-04-01 10:00:00",
    }
    assert [deals[str(i)]["title"] for i in range(3)] == ["Deal 3", "Deal 2", "Deal 1"]
    search = pipedrive.requests_to("/api/v1/persons/search")[0]
    assert search.query == {
        "term": EMAIL,
        "fields": "email",
        "exact_match": "true",
        "limit": "10",
        "api_token": TOKEN,
    }
    listing = pipedrive.requests_to("/api/v1/persons/7/deals")[0].query
    assert (listing["status"], listing["sort"], listing["limit"]) == ("open", "add_time DESC", "3")


async def test_documented_fields_are_what_comes_back(
    pipedrive: FakePipedrive, session: Any
) -> None:
    conn = await connect(pipedrive, session)

    outcome = await conn.fetch(EMAIL)

    assert flat_keys(outcome.fields) == flat_keys(conn.declared_shape())


async def test_no_open_deals_gives_a_zero_count(pipedrive: FakePipedrive, session: Any) -> None:
    pipedrive.deals.clear()
    conn = await connect(pipedrive, session)

    outcome = await conn.fetch(EMAIL)

    assert outcome.fields["deals"] == {"count": 0}


async def test_unknown_customer_adds_nothing(pipedrive: FakePipedrive, session: Any) -> None:
    conn = await connect(pipedrive, session)

    assert (await conn.fetch("nobody@example.com")).status == "not_found"
    assert len(pipedrive.seen) == 1


async def test_several_matches_take_the_best_scored(pipedrive: FakePipedrive, session: Any) -> None:
    pipedrive.persons[8] = {"name": "Second", "emails": [EMAIL]}
    conn = await connect(pipedrive, session)

    assert (await conn.fetch(EMAIL)).fields["id"] == 7


async def test_401_is_an_error_and_check_names_auth(pipedrive: FakePipedrive, session: Any) -> None:
    conn = await connect(pipedrive, session, token="wrong")

    assert (await conn.fetch(EMAIL)).status == "error"
    with pytest.raises(FatalError, match=r"^auth \(query\): HTTP 401") as info:
        await conn.check()
    assert "wrong" not in str(info.value)


async def test_429_waits_for_the_window_reset(pipedrive: FakePipedrive, session: Any) -> None:
    pipedrive.fail_next(
        429,
        {"success": False, "error": "Request over limit", "errorCode": 429},
        headers={**rate_headers(0), "x-ratelimit-reset": "0"},
        path="/api/v1/persons/search",
    )
    conn = await connect(pipedrive, session, timeout=5.0)

    assert (await conn.fetch(EMAIL)).attempts == 2


async def test_5xx_on_details_keeps_the_person(pipedrive: FakePipedrive, session: Any) -> None:
    pipedrive.fail_next(
        500, {"success": False, "error": "Internal"}, path="/api/v1/persons/7", exact=True, times=2
    )
    conn = await connect(pipedrive, session, timeout=5.0)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.fields["name"], outcome.fields["person_error"]) == ("Pat O'Brien", "error")
    assert "owner" not in outcome.fields
    assert outcome.fields["deals"]["count"] == 3  # the open deals listed: the total is lost
    assert outcome.steps["deals"].status == "ok"
