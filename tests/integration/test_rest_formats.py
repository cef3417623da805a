"""``formats`` on rest connectors, their ``then`` steps and the presets, against local servers.

The same specs as the postgres connector's (``aggregator.formats``): money in major units
with a fixed currency or one read from another field, money in minor units (as Stripe
sends it), dates and datetimes. A CRM's ``2400`` then shows as ``"€2400.00"``, like the
Stripe connector's amounts, and its ISO timestamps as plain dates. Bad specs, and names
that are not among ``fields``, are refused when the config loads, at their line.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from aggregator.config import parse_settings
from aggregator.errors import ConfigError
from tests.support.proxy import running_proxy, settings_from
from tests.support.scripted import Make, Start
from tests.support.vendors.base import Handler, open_preset, reply
from tests.support.vendors.hubspot import TOKEN as HUBSPOT_TOKEN
from tests.support.vendors.hubspot import FakeHubSpot

CONTACT = {
    "id": 7,
    "plan": "Pro",
    "mrr": 2400,
    "balance": "-12.5",
    "balance_currency": "CHF",
    "paid_cents": 129900,
    "signed_up": "2021-03-04T23:30:00-05:00",
    "seen": "2024-05-01T14:00:00+02:00",
    "notes": "n/a",
}


def _router(routes: dict[str, Handler]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await routes[request.path](request)

    return handle


async def test_picked_fields_are_shown_as_their_formats_say(serve: Start, make: Make) -> None:
    up = await serve(reply({"data": [CONTACT]}))
    conn = await make(
        url=f"{up.url}/contacts?email={{email}}",
        select="data[0]",
        fields={
            "plan": "plan",
            "mrr": "mrr",
            "balance": "balance",
            "currency": "balance_currency",
            "paid": "paid_cents",
            "signed_up": "signed_up",
            "seen": "seen",
            "notes": "notes",
            "missing": "nowhere",
        },
        formats={
            "mrr": "money:eur",
            "balance": "money:@currency",
            "paid": "cents:usd",
            "signed_up": "date",
            "seen": "datetime",
            "notes": "money:usd",
            "missing": "date",
        },
    )

    outcome = await conn.fetch("ann@example.com")

    assert outcome.status == "ok"
    assert outcome.fields == {
        "plan": "Pro",
        "mrr": "€2400.00",
        "balance": "-12.50 CHF",
        "currency": "CHF",
        "paid": "$1299.00",
        "signed_up": "2021-03-05",  # taken in UTC
        "seen": "2024-05-01T12:00:00Z",
        "notes": "n/a",  # does not fit its format: shown as it is
    }


async def test_without_fields_the_selected_objects_keys_are_formatted(
    serve: Start, make: Make
) -> None:
    up = await serve(reply(CONTACT))
    conn = await make(
        url=f"{up.url}/contacts?email={{email}}",
        formats={"mrr": "money:gbp", "balance": "money:@balance_currency", "signed_up": "date"},
        link=f"{up.url}/ui/{{id}}",
    )

    outcome = await conn.fetch("ann@example.com")

    assert outcome.status == "ok"
    assert outcome.fields is not None
    assert outcome.fields["mrr"] == "£2400.00"
    assert outcome.fields["balance"] == "-12.50 CHF"
    assert outcome.fields["signed_up"] == "2021-03-05"
    assert outcome.fields["paid_cents"] == 129900
    assert outcome.fields["url"] == f"{up.url}/ui/7"


async def test_then_steps_format_their_fields_and_each_selected_item(
    serve: Start, make: Make
) -> None:
    invoices = {
        "total": 9,
        "invoices": [
            {"amount": 1250, "currency": "usd", "due": "2024-06-01T00:00:00Z"},
            {"amount": 99000, "currency": "jpy", "due": "2024-07-01T00:00:00Z"},
            {"amount": 5, "currency": "eur", "due": "2024-08-01T00:00:00Z"},
        ],
    }
    up = await serve(
        _router(
            {
                "/contacts": reply({"id": 7}),
                "/subscription": reply({"plan": {"price": "49.9", "renews": "2024-09-30"}}),
                "/invoices": reply(invoices),
                "/payments": reply([{"paid": "10", "on": "2024-01-02T10:00:00Z"}]),
            }
        )
    )
    conn = await make(
        url=f"{up.url}/contacts?email={{email}}",
        timeout=5.0,
        then={
            "subscription": {
                "url": f"{up.url}/subscription?c={{id}}",
                "fields": {"price": "plan.price", "renews": "plan.renews"},
                "formats": {"price": "money:usd", "renews": "datetime"},
            },
            "invoices": {
                "url": f"{up.url}/invoices?c={{id}}",
                "select": "invoices",
                "max_items": 2,
                "count": "total",
                "formats": {"amount": "cents:@currency", "due": "date"},
            },
            "payments": {
                "url": f"{up.url}/payments?c={{id}}",
                "formats": {"paid": "money:eur", "on": "date"},
            },
        },
    )

    outcome = await conn.fetch("ann@example.com")

    assert outcome.status == "ok"
    assert outcome.fields == {
        "id": 7,
        "subscription": {"price": "$49.90", "renews": "2024-09-30T00:00:00Z"},
        "invoices": {
            "0": {"amount": "$12.50", "currency": "usd", "due": "2024-06-01"},
            "1": {"amount": "99000 JPY", "currency": "jpy", "due": "2024-07-01"},
            "count": 9,
        },
        "payments": [{"paid": "€10.00", "on": "2024-01-02"}],
    }


async def test_a_rest_source_looks_like_stripe_in_the_profile(serve: Start) -> None:
    """Through the proxy, from a config as written: crm_mrr reads like stripe_mrr does."""
    up = await serve(reply({"data": [CONTACT]}))
    crm = {
        "type": "rest",
        "url": f"{up.url}/contacts?email={{email}}",
        "select": "data[0]",
        "fields": {"plan": "plan", "mrr": "mrr", "signed_up": "signed_up"},
        "formats": {"mrr": "money:usd", "signed_up": "date"},
    }
    async with running_proxy(settings_from({"crm": crm})) as proxy:
        status, body = await proxy.profile("ann@example.com")

    assert status == 200
    assert (body["crm_plan"], body["crm_mrr"], body["crm_signed_up"]) == (
        "Pro",
        "$2400.00",
        "2021-03-05",
    )


async def test_preset_formats_reach_top_level_fields_and_list_items() -> None:
    hubspot = FakeHubSpot()
    hubspot.add_contact("101", email="pat@example.com", createdate="2023-01-02T03:04:05Z")
    hubspot.add_deal("901", "101", dealname="Big", amount="4000", closedate="2024-12-31T23:00:00Z")
    await hubspot.start()
    try:
        async with aiohttp.ClientSession() as session:
            settings = {
                "type": "hubspot",
                "token": HUBSPOT_TOKEN,
                "api_base": hubspot.url,
                "portal_id": "42",
                "formats": {
                    "created_at": "date",
                    "deals.amount": "money:usd",
                    "deals.close_date": "date",
                },
            }
            conn = await open_preset("hubspot", settings, session)
            outcome = await conn.fetch("pat@example.com")
            await conn.close()
    finally:
        await hubspot.stop()

    assert outcome.status == "ok"
    assert outcome.fields is not None
    assert outcome.fields["created_at"] == "2023-01-02"
    deal = outcome.fields["deals"]["0"]
    assert (deal["name"], deal["amount"], deal["close_date"]) == ("Big", "$4000.00", "2024-12-31")
    assert outcome.fields["deals"]["count"] == 1


# -- refused at load, at the line ------------------------------------------------------


def _config(connector: str) -> str:
    return 'auth: {api_tokens: ["t"]}\nconnectors:\n  crm:\n' + connector


@pytest.mark.parametrize(
    ("connector", "expected"),
    [
        (
            '    type: rest\n    url: "http://crm/c?e={email}"\n    formats:\n      mrr: money\n',
            "c.yaml:7: connectors.crm.formats.mrr: money needs a currency",
        ),
        (
            "    type: rest\n"
            '    url: "http://crm/c?e={email}"\n'
            "    then:\n"
            "      deals:\n"
            '        url: "http://crm/deals?c={id}"\n'
            "        formats: {amount: 'money:euro'}\n",
            "c.yaml:9: connectors.crm.then.deals.formats.amount: 'euro' is not a currency",
        ),
        (
            "    type: rest\n"
            '    url: "http://crm/c?e={email}"\n'
            "    fields: {mrr: mrr, plan: plan}\n"
            "    formats: {mrr: 'money:eur', mrrr: date}\n",
            "c.yaml:7: connectors.crm.formats: 'mrrr' is not one of the fields (mrr, plan)",
        ),
        (
            "    type: rest\n"
            '    url: "http://crm/c?e={email}"\n'
            "    fields: {mrr: mrr}\n"
            "    formats: {mrr: 'money:@currency'}\n",
            "c.yaml:7: connectors.crm.formats: mrr: 'money:@currency' reads the currency "
            "from 'currency', which is not one of the fields (mrr)",
        ),
        (
            "    type: hubspot\n    token: t\n    formats: {tickets.amount: 'money:eur'}\n",
            "c.yaml:6: connectors.crm.formats: 'tickets' is not a list of this preset (deals)",
        ),
        (
            "    type: hubspot\n"
            "    token: t\n"
            "    formats: {deals.amount: 'money:@deal_currency'}\n",
            "'deal_currency', which is not one of the fields of a deals item",
        ),
        (
            "    type: pipedrive\n"
            "    company_domain: acme\n"
            "    token: t\n"
            "    formats: {revenue: 'money:eur'}\n",
            "c.yaml:7: connectors.crm.formats: 'revenue' is not one of the fields (id, "
            "last_activity_date, name,",
        ),
    ],
)
def test_bad_formats_are_refused_at_load(connector: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(_config(connector), source="c.yaml", env={})
    assert expected in str(info.value)
