"""The hubspot preset against a HubSpot-shaped server (see tests/support/vendors/hubspot.py
for the reference pages it follows: CRM search, deal search by association, errors,
rate-limit headers, account details)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from aggregator.errors import FatalError
from tests.support.vendors.base import flat_keys, open_preset
from tests.support.vendors.hubspot import PORTAL_ID, TOKEN, FakeHubSpot, rate_limited

EMAIL = "o'brien+vip@example.com"


@pytest.fixture
async def hubspot() -> AsyncIterator[FakeHubSpot]:
    fake = FakeHubSpot()
    fake.add_contact(
        "101",
        email="O'Brien+VIP@example.com",
        firstname="Pat",
        lastname="O'Brien",
        company="Acme",
        jobtitle="CTO",
        lifecyclestage="customer",
        hubspot_owner_id="9",
        createdate="2023-01-02T03:04:05Z",
        lastmodifieddate="2024-05-01T00:00:00Z",
    )
    for n in range(5):
        fake.add_deal(
            f"90{n}",
            "101",
            dealname=f"Deal {n}",
            dealstage="appointmentscheduled",
            amount=f"{n}000",
            createdate=f"2024-0{n + 1}-01T00:00:00Z",
        )
    await fake.start()
    yield fake
    await fake.stop()


async def connect(fake: FakeHubSpot, session: aiohttp.ClientSession, **extra: Any) -> Any:
    settings = {"type": "hubspot", "token": TOKEN, "api_base": fake.url, "retries": 1, **extra}
    return await open_preset("hubspot", settings, session)


async def test_contact_link_and_latest_deals(hubspot: FakeHubSpot, session: Any) -> None:
    conn = await connect(hubspot, session)

    outcome = await conn.fetch(EMAIL)

    assert outcome.status == "ok"
    fields = dict(outcome.fields)
    deals = fields.pop("deals")
    assert fields == {
        "id": "101",
        "matches": 1,
        "first_name": "Pat",
        "last_name": "O'Brien",
        "company": "Acme",
        "job_title": "CTO",
        "lifecycle_stage": "customer",
        "owner_id": "9",
        "created_at": "2023-01-02T03:04:05Z",
        "updated_at": "2024-05-01T00:00:00Z",
        "url": f"https://app.hubspot.com/contacts/{PORTAL_ID}/record/0-1/101",
    }
    assert deals["count"] == 5  # HubSpot's total, though one page of 3 was fetched
    assert [deals[str(i)]["name"] for i in range(3)] == ["Deal 4", "Deal 3", "Deal 2"]
    assert deals["0"]["amount"] == "4000"
    assert outcome.steps["deals"].status == "ok"
    search = hubspot.requests_to("/crm/v3/objects/contacts/search")[0]
    assert search.headers["Authorization"] == f"Bearer {TOKEN}"
    assert search.json()["filterGroups"][0]["filters"][0] == {
        "propertyName": "email",
        "operator": "EQ",
        "value": EMAIL,
    }
    deal_search = hubspot.requests_to("/crm/v3/objects/deals/search")[0].json()
    assert deal_search["filterGroups"][0]["filters"][0]["value"] == "101"
    assert deal_search["limit"] == 3


async def test_documented_fields_are_what_comes_back(hubspot: FakeHubSpot, session: Any) -> None:
    conn = await connect(hubspot, session)
    hubspot.contacts["101"] |= {"phone": "+1 555", "hs_lead_status": "OPEN"}
    for deal in hubspot.deals.values():
        deal["properties"]["closedate"] = "2024-12-31T00:00:00Z"

    outcome = await conn.fetch(EMAIL)

    assert flat_keys(outcome.fields) == flat_keys(conn.declared_shape())


async def test_account_details_are_read_once_for_links(hubspot: FakeHubSpot, session: Any) -> None:
    conn = await connect(hubspot, session)

    for _ in range(3):
        await conn.fetch(EMAIL)

    assert len(hubspot.requests_to("/account-info/v3/details")) == 1


async def test_a_configured_portal_id_needs_no_account_call(
    hubspot: FakeHubSpot, session: Any
) -> None:
    conn = await connect(hubspot, session, portal_id=777, ui_domain="app-eu1.hubspot.com")

    outcome = await conn.fetch(EMAIL)

    assert outcome.fields["url"] == "https://app-eu1.hubspot.com/contacts/777/record/0-1/101"
    assert hubspot.requests_to("/account-info") == []


async def test_unknown_customer_adds_nothing(hubspot: FakeHubSpot, session: Any) -> None:
    conn = await connect(hubspot, session)

    outcome = await conn.fetch("nobody@example.com")

    assert (outcome.status, outcome.fields) == ("not_found", None)
    assert hubspot.requests_to("/crm/v3/objects/deals") == []


async def test_several_matches_take_the_most_recently_modified(
    hubspot: FakeHubSpot, session: Any
) -> None:
    hubspot.add_contact(
        "102", email=EMAIL, firstname="Newer", lastmodifieddate="2024-06-01T00:00:00Z"
    )
    conn = await connect(hubspot, session)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.fields["id"], outcome.fields["first_name"]) == ("102", "Newer")
    assert outcome.fields["matches"] == 2
    assert outcome.fields["deals"] == {"count": 0}


async def test_401_is_an_error_and_check_names_auth(hubspot: FakeHubSpot, session: Any) -> None:
    conn = await connect(hubspot, session, token="pat-wrong")

    outcome = await conn.fetch(EMAIL)
    with pytest.raises(FatalError, match=r"^auth \(bearer\): HTTP 401") as info:
        await conn.check()

    assert (outcome.status, outcome.detail) == ("error", "FatalError")
    assert "pat-wrong" not in str(info.value)


async def test_429_with_rate_limit_headers_is_retried(hubspot: FakeHubSpot, session: Any) -> None:
    body, headers = rate_limited()
    hubspot.fail_next(429, body, headers=headers, path="/crm/v3/objects/contacts")
    conn = await connect(hubspot, session, timeout=5.0)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.status, outcome.attempts) == ("ok", 2)


async def test_5xx_is_retried_then_an_error(hubspot: FakeHubSpot, session: Any) -> None:
    hubspot.fail_next(502, b"<html>Bad Gateway</html>", times=2)
    conn = await connect(hubspot, session, timeout=5.0)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.status, outcome.attempts) == ("error", 2)


async def test_a_failing_deal_search_keeps_the_contact(hubspot: FakeHubSpot, session: Any) -> None:
    body, headers = rate_limited()
    hubspot.fail_next(429, body, headers=headers, path="/crm/v3/objects/deals", times=2)
    conn = await connect(hubspot, session, timeout=5.0)

    outcome = await conn.fetch(EMAIL)

    assert outcome.status == "ok"
    assert outcome.fields["deals_error"] == "error"
    assert outcome.fields["first_name"] == "Pat"
    assert outcome.partial
