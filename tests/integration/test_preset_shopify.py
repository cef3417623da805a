"""The shopify preset against a Shopify-shaped GraphQL Admin API (the reference pages are
cited in tests/support/vendors/shopify.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from tests.support.vendors.base import flat_keys, open_preset
from tests.support.vendors.shopify import TOKEN, FakeShopify, throttled

EMAIL = "o'brien+vip@example.com"
ORDERS = [
    {"name": f"#10{n}", "createdAt": f"2024-0{n + 1}-01T00:00:00Z", "total": f"{n}5.5"}
    for n in range(5)
]


@pytest.fixture
async def shopify() -> AsyncIterator[FakeShopify]:
    fake = FakeShopify()
    fake.add_customer(
        207119551,
        "O'Brien+VIP@example.com",
        ORDERS,
        displayName="Pat O'Brien",
        phone="+16135551212",
        tags=["vip", "wholesale"],
        amountSpent={"amount": "1500.5", "currencyCode": "USD"},
        updatedAt="2024-05-01T00:00:00Z",
    )
    await fake.start()
    yield fake
    await fake.stop()


async def connect(fake: FakeShopify, session: Any, **extra: Any) -> Any:
    settings = {
        "type": "shopify",
        "shop": "acme",
        "token": TOKEN,
        "api_base": fake.url,
        "retries": 1,
        **extra,
    }
    return await open_preset("shop", settings, session)


async def test_customer_totals_and_latest_orders(shopify: FakeShopify, session: Any) -> None:
    conn = await connect(shopify, session)

    outcome = await conn.fetch(EMAIL)

    assert outcome.status == "ok"
    fields = dict(outcome.fields)
    orders = fields.pop("orders")
    assert fields == {
        "id": "207119551",
        "name": "Pat O'Brien",
        "phone": "+16135551212",
        "created_at": "2023-01-01T00:00:00Z",
        "state": "ENABLED",
        "tags": ["vip", "wholesale"],
        "orders_count": 5,
        "total_spent": "$1500.50",
        "url": "https://admin.shopify.com/store/acme/customers/207119551",
    }
    assert orders["count"] == 5
    assert orders["0"] == {
        "name": "#104",
        "created_at": "2024-05-01T00:00:00Z",
        "financial_status": "PAID",
        "fulfillment_status": "FULFILLED",
        "cancelled_at": None,
        "total": "$45.50",
    }
    assert [orders[str(i)]["name"] for i in range(3)] == ["#104", "#103", "#102"]
    sent = shopify.seen[0]
    assert sent.headers["X-Shopify-Access-Token"] == TOKEN
    assert sent.json()["variables"] == {"query": f'email:"{EMAIL}"', "orders": 3}


async def test_documented_fields_are_what_comes_back(shopify: FakeShopify, session: Any) -> None:
    shopify.customers[0]["note"] = "Prefers email"
    conn = await connect(shopify, session)

    outcome = await conn.fetch(EMAIL)

    assert flat_keys(outcome.fields) == flat_keys(conn.declared_shape())


@pytest.mark.parametrize("address", ['a"b@example.com', "back\\slash@example.com"])
async def test_quotes_and_backslashes_stay_inside_the_search_term(
    shopify: FakeShopify, session: Any, address: str
) -> None:
    shopify.add_customer(1, address, [], displayName="Odd")
    conn = await connect(shopify, session)

    outcome = await conn.fetch(address)

    assert (outcome.status, outcome.fields["name"]) == ("ok", "Odd")


async def test_unknown_customer_adds_nothing(shopify: FakeShopify, session: Any) -> None:
    conn = await connect(shopify, session)

    assert (await conn.fetch("nobody@example.com")).status == "not_found"


async def test_several_matches_take_the_last_updated(shopify: FakeShopify, session: Any) -> None:
    shopify.add_customer(2, EMAIL, [], displayName="Newer", updatedAt="2024-09-01T00:00:00Z")
    conn = await connect(shopify, session)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.fields["id"], outcome.fields["orders"]) == ("2", {"count": 0})


async def test_a_graphql_errors_answer_is_an_error(shopify: FakeShopify, session: Any) -> None:
    shopify.fail_next(
        200,
        {
            "errors": [
                {
                    "message": "Field 'numberOfOrders' doesn't exist on type 'Customer'",
                    "locations": [{"line": 5, "column": 7}],
                    "extensions": {"code": "undefinedField", "typeName": "Customer"},
                }
            ]
        },
    )
    conn = await connect(shopify, session)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.status, outcome.detail, len(shopify.seen)) == ("error", "FatalError", 1)


async def test_throttled_is_retried_after_the_bucket_refills(
    shopify: FakeShopify, session: Any
) -> None:
    shopify.fail_next(200, throttled(available=11.5, requested=12))  # 0.01 s to refill
    conn = await connect(shopify, session, timeout=5.0)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.status, outcome.attempts) == ("ok", 2)


async def test_throttled_beyond_the_deadline_is_not_waited(
    shopify: FakeShopify, session: Any
) -> None:
    shopify.fail_next(200, throttled(available=0, requested=500))  # 10 s to refill
    conn = await connect(shopify, session, timeout=2.0)

    outcome = await conn.fetch(EMAIL)

    assert (outcome.status, len(shopify.seen)) == ("error", 1)


async def test_401_and_429_and_5xx(shopify: FakeShopify, session: Any) -> None:
    bad = await connect(shopify, session, token="shpat_wrong")
    assert (await bad.fetch(EMAIL)).status == "error"

    conn = await connect(shopify, session, timeout=5.0)
    shopify.fail_next(
        429,
        {"errors": "Exceeded 2 calls per second for api client."},
        headers={"Retry-After": "0.0"},
    )
    assert (await conn.fetch(EMAIL)).attempts == 2
    shopify.fail_next(500, {"errors": "Internal Server Error"}, times=2)
    assert (await conn.fetch(EMAIL)).status == "error"


def test_the_shop_must_be_a_host_label() -> None:
    from pydantic import ValidationError

    from connectors.presets.shopify import ShopifySettings

    token = SecretStr("t")
    assert ShopifySettings(type="shopify", shop="Acme.myshopify.com", token=token).shop == "acme"
    with pytest.raises(ValidationError, match="host name label"):
        ShopifySettings(type="shopify", shop="evil.example/x?", token=token)
