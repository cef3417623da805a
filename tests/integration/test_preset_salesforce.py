"""The salesforce preset against a Salesforce-shaped server (token endpoint and SOQL query
resource; the reference pages are cited in tests/support/vendors/salesforce.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from aggregator.errors import FatalError
from tests.support.vendors.base import flat_keys, open_preset
from tests.support.vendors.salesforce import CLIENT_ID, LIMIT_INFO, FakeSalesforce, errors

EMAIL = "o'brien+vip@example.com"


@pytest.fixture
async def salesforce() -> AsyncIterator[FakeSalesforce]:
    fake = FakeSalesforce()
    fake.add(
        "Contact",
        "003A",
        Email="O'Brien+VIP@example.com",
        Name="Pat O'Brien",
        Title="CTO",
        Phone="+1 555 0100",
        Account={"Name": "Acme Corp"},
        Owner={"Name": "Sam Rivera"},
        LastModifiedDate="2024-05-01T10:00:00.000+0000",
    )
    await fake.start()
    yield fake
    await fake.stop()


async def connect(fake: FakeSalesforce, session: Any, **extra: Any) -> Any:
    settings = {
        "type": "salesforce",
        "api_base": fake.url,
        "client_id": CLIENT_ID,
        "client_secret": fake.secret,
        "retries": 1,
        **extra,
    }
    return await open_preset("salesforce", settings, session)


async def test_contact_found_with_a_quote_in_the_email(
    salesforce: FakeSalesforce, session: Any
) -> None:
    conn = await connect(salesforce, session)

    outcome = await conn.fetch(EMAIL)

    assert outcome.status == "ok"
    assert outcome.fields == {
        "type": "Contact",
        "id": "003A",
        "name": "Pat O'Brien",
        "title": "CTO",
        "phone": "+1 555 0100",
        "account": "Acme Corp",
        "owner": "Sam Rivera",
        "updated_at": "2024-05-01T10:00:00.000+0000",
        "matches": 1,
        "url": f"{salesforce.url}/lightning/r/Contact/003A/view",
    }
    query = salesforce.requests_to("/services/data/")[0]
    assert "WHERE Email = 'o\\'brien+vip@example.com'" in query.query["q"]
    assert "%2B" in query.raw_path and "%27" in query.raw_path
    assert query.headers["Authorization"].startswith("Bearer 00Dxx")
    token_form = salesforce.requests_to("/services/oauth2/token")[0].form()
    assert token_form == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": salesforce.secret,
    }


async def test_documented_fields_are_what_comes_back(
    salesforce: FakeSalesforce, session: Any
) -> None:
    salesforce.records["003A"] |= {"Company": "not selected for contacts", "Status": "x"}
    conn = await connect(salesforce, session)
    contact = await conn.fetch(EMAIL)
    salesforce.add("Lead", "00QB", Email="lead@example.com", Company="Initech", Status="Open")
    lead = await conn.fetch("lead@example.com")

    documented = flat_keys(conn.declared_shape())
    assert flat_keys(contact.fields) | flat_keys(lead.fields) <= documented
    assert documented - flat_keys(contact.fields) == {"company", "lead_status"}


async def test_an_open_lead_when_no_contact_has_the_email(
    salesforce: FakeSalesforce, session: Any
) -> None:
    salesforce.add("Lead", "00QA", Email="lead@example.com", Name="Lee", IsConverted=True)
    salesforce.add(
        "Lead",
        "00QB",
        Email="Lead@Example.com",
        Name="Lee Open",
        Company="Initech",
        Status="Working - Contacted",
        Owner={"Name": "Priya"},
    )
    conn = await connect(salesforce, session)

    outcome = await conn.fetch("lead@example.com")

    assert outcome.fields == {
        "type": "Lead",
        "id": "00QB",
        "name": "Lee Open",
        "company": "Initech",
        "lead_status": "Working - Contacted",
        "owner": "Priya",
        "matches": 1,
        "url": f"{salesforce.url}/lightning/r/Lead/00QB/view",
    }
    soql = [s.query["q"] for s in salesforce.requests_to("/services/data/")]
    assert [" FROM Contact " in q for q in soql] == [True, False]


async def test_unknown_customer_adds_nothing(salesforce: FakeSalesforce, session: Any) -> None:
    conn = await connect(salesforce, session)

    outcome = await conn.fetch("nobody@example.com")

    assert (outcome.status, outcome.fields) == ("not_found", None)
    assert len(salesforce.requests_to("/services/oauth2/token")) == 1


async def test_several_contacts_take_the_latest_modified(
    salesforce: FakeSalesforce, session: Any
) -> None:
    salesforce.add(
        "Contact",
        "003B",
        Email=EMAIL,
        Name="Newer",
        LastModifiedDate="2024-07-01T00:00:00.000+0000",
    )
    conn = await connect(salesforce, session)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.fields["id"], outcome.fields["matches"]) == ("003B", 2)


async def test_an_expired_session_gets_a_new_token_once(
    salesforce: FakeSalesforce, session: Any
) -> None:
    conn = await connect(salesforce, session)
    await conn.fetch(EMAIL)
    salesforce.revoked.update(salesforce.issued)

    outcome = await conn.fetch(EMAIL)

    assert outcome.status == "ok"
    assert len(salesforce.requests_to("/services/oauth2/token")) == 2


async def test_401_after_a_new_token_is_an_error(salesforce: FakeSalesforce, session: Any) -> None:
    salesforce.fail_next(
        401,
        errors("INVALID_SESSION_ID", "Session expired or invalid"),
        path="/services/data",
        times=4,
    )
    conn = await connect(salesforce, session)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.status, outcome.detail) == ("error", "FatalError")
    assert len(salesforce.requests_to("/services/data/")) == 2


async def test_a_wrong_client_secret_is_named_by_check(
    salesforce: FakeSalesforce, session: Any
) -> None:
    conn = await connect(salesforce, session, client_secret="not-the-secret")

    with pytest.raises(FatalError) as info:
        await conn.check()

    assert (
        str(info.value) == "auth (oauth2): OAuth token request refused: HTTP 400 (invalid_client)"
    )


async def test_the_daily_limit_answer_is_an_error_not_retried(
    salesforce: FakeSalesforce, session: Any
) -> None:
    # Salesforce's REST API answers its request limit with 403 REQUEST_LIMIT_EXCEEDED
    # (a daily allocation: retrying within a profile's deadline cannot help).
    salesforce.fail_next(
        403,
        errors("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
        headers={"Sforce-Limit-Info": "api-usage=15001/15000"},
        path="/services/data",
    )
    conn = await connect(salesforce, session)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.status, len(salesforce.requests_to("/services/data/"))) == ("error", 1)


async def test_429_and_5xx_are_retried(salesforce: FakeSalesforce, session: Any) -> None:
    salesforce.fail_next(
        429,
        errors("REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn"),
        headers={**LIMIT_INFO, "Retry-After": "0"},
        path="/services/data",
    )
    conn = await connect(salesforce, session, timeout=5.0)
    assert (await conn.fetch(EMAIL)).status == "ok"

    salesforce.fail_next(503, b"Service Unavailable", path="/services/data", times=2)
    outcome = await conn.fetch(EMAIL)
    assert (outcome.status, outcome.attempts) == ("error", 2)


def test_settings_need_an_instance_or_api_base() -> None:
    from pydantic import ValidationError

    from connectors.presets.salesforce import SalesforceSettings

    with pytest.raises(ValidationError, match="instance"):
        SalesforceSettings(type="salesforce", client_id="a", client_secret=SecretStr("b"))
    with pytest.raises(ValidationError, match="My Domain"):
        SalesforceSettings(
            type="salesforce", instance="evil.com/x#", client_id="a", client_secret=SecretStr("b")
        )
