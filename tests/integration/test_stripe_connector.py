"""The stripe connector through the official library against a Stripe-shaped local server."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from aggregator.errors import FatalError, UnavailableError
from connectors.stripe import StripeConnector, StripeSettings
from tests.support.fake_stripe import FakeStripe

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
DAY = 86_400
EMAIL = "ada@example.com"

Connect = Callable[..., Awaitable[StripeConnector]]


@pytest.fixture
async def connect(fake_stripe: FakeStripe) -> AsyncIterator[Connect]:
    """Open connectors against the fake on one shared session; close them all after."""
    session = aiohttp.ClientSession()
    opened: list[StripeConnector] = []

    async def make(**overrides: Any) -> StripeConnector:
        values = {"type": "stripe", "api_key": fake_stripe.key, "api_base": fake_stripe.url}
        connector = StripeConnector("stripe", StripeSettings.model_validate(values | overrides))
        await connector.open(session)
        opened.append(connector)
        return connector

    yield make
    for connector in opened:
        await connector.close()
    await session.close()


async def fields_of(connector: StripeConnector, email: str = EMAIL) -> dict[str, Any]:
    outcome = await connector.fetch(email)
    assert outcome.status == "ok", outcome
    assert outcome.fields is not None
    return dict(outcome.fields)


async def test_active_monthly_subscription_gives_every_field(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    ada = fake_stripe.add_customer(EMAIL, created=T0, balance=-2500, id="cus_ada")
    fake_stripe.add_subscription(
        ada,
        [fake_stripe.item(2900, product="Pro", current_period_end=T0 + 30 * DAY)],
        created=T0 + 10,
    )
    fake_stripe.add_charge(ada, 2900, created=T0 + 20)

    fields = await fields_of(await connect())

    assert fields == {
        "id": "cus_ada",
        "created_at": "2023-11-14T22:13:20Z",
        "currency": "usd",
        "balance": "-$25.00",
        "delinquent": False,
        "dashboard_url": "https://dashboard.stripe.com/test/customers/cus_ada",
        "customers_count": 1,
        "subscriptions_count": 1,
        "subscription_status": "active",
        "plan": "Pro",
        "mrr": "$29.00",
        "current_period_end": "2023-12-14T22:13:20Z",
        "trial_end": None,
        "cancel_at_period_end": False,
        "charges_count": 1,
        "last_charge_amount": "$29.00",
        "last_charge_at": "2023-11-14T22:13:40Z",
        "last_charge_status": "succeeded",
        "first_charge_at": "2023-11-14T22:13:40Z",
        "lifetime_value": "$29.00",
    }


async def test_customer_without_subscription_or_charges(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    fake_stripe.add_customer(EMAIL, delinquent=True)

    fields = await fields_of(await connect())

    assert fields["delinquent"] is True
    assert fields["subscriptions_count"] == 0
    assert fields["subscription_status"] is None
    assert fields["plan"] is None
    assert fields["mrr"] == "$0.00"
    assert fields["charges_count"] == 0
    assert fields["last_charge_at"] is None
    assert fields["lifetime_value"] == "$0.00"


async def test_active_subscription_is_main_even_when_a_canceled_one_is_newer(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    ada = fake_stripe.add_customer(EMAIL)
    fake_stripe.add_subscription(
        ada, [fake_stripe.item(1000, nickname="Basic")], status="active", created=T0
    )
    fake_stripe.add_subscription(
        ada, [fake_stripe.item(9000, nickname="Gold")], status="canceled", created=T0 + DAY
    )

    fields = await fields_of(await connect())

    assert fields["subscriptions_count"] == 2
    assert fields["subscription_status"] == "active"
    assert fields["plan"] == "Basic"
    assert fields["mrr"] == "$10.00"


async def test_only_a_canceled_subscription(fake_stripe: FakeStripe, connect: Connect) -> None:
    ada = fake_stripe.add_customer(EMAIL)
    fake_stripe.add_subscription(
        ada,
        [fake_stripe.item(5000, product="Team", current_period_end=T0)],
        status="canceled",
    )

    fields = await fields_of(await connect())

    assert fields["subscriptions_count"] == 1
    assert fields["subscription_status"] == "canceled"
    assert fields["plan"] == "Team"
    assert fields["mrr"] == "$0.00"
    assert fields["current_period_end"] == "2023-11-14T22:13:20Z"


async def test_trial_with_legacy_period_end_on_the_subscription(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    ada = fake_stripe.add_customer(EMAIL)
    fake_stripe.add_subscription(
        ada,
        [fake_stripe.item(2000, nickname="Starter")],
        status="trialing",
        trial_end=T0 + 14 * DAY,
        current_period_end=T0 + 14 * DAY,
        cancel_at_period_end=True,
    )

    fields = await fields_of(await connect())

    assert fields["subscription_status"] == "trialing"
    assert fields["trial_end"] == "2023-11-28T22:13:20Z"
    assert fields["current_period_end"] == "2023-11-28T22:13:20Z"
    assert fields["cancel_at_period_end"] is True
    assert fields["mrr"] == "$20.00"


@pytest.mark.parametrize(
    ("interval", "interval_count", "unit_amount", "quantity", "mrr"),
    [
        ("year", 1, 120_000, 3, "$300.00"),
        ("week", 1, 1_000, 2, "$86.67"),
        ("month", 3, 9_000, 2, "$60.00"),
        ("day", 1, 100, 1, "$30.44"),
        ("year", 2, 24_000, 1, "$10.00"),
    ],
)
async def test_mrr_is_normalized_to_a_month(
    fake_stripe: FakeStripe,
    connect: Connect,
    interval: str,
    interval_count: int,
    unit_amount: int,
    quantity: int,
    mrr: str,
) -> None:
    ada = fake_stripe.add_customer(EMAIL)
    item = fake_stripe.item(
        unit_amount, interval=interval, interval_count=interval_count, quantity=quantity
    )
    fake_stripe.add_subscription(ada, [item])

    assert (await fields_of(await connect()))["mrr"] == mrr


async def test_mrr_sums_every_live_subscription_and_item(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    ada = fake_stripe.add_customer(EMAIL)
    fake_stripe.add_subscription(
        ada, [fake_stripe.item(1000), fake_stripe.item(12_000, interval="year", quantity=2)]
    )
    fake_stripe.add_subscription(ada, [fake_stripe.item(500)], status="past_due")
    fake_stripe.add_subscription(ada, [fake_stripe.item(700)], status="incomplete_expired")

    fields = await fields_of(await connect())

    assert fields["mrr"] == "$35.00"
    assert fields["subscriptions_count"] == 3


async def test_euro_money(fake_stripe: FakeStripe, connect: Connect) -> None:
    ada = fake_stripe.add_customer(EMAIL, currency="eur", balance=1234)
    fake_stripe.add_subscription(ada, [fake_stripe.item(1990, currency="eur")])
    fake_stripe.add_charge(ada, 1990, currency="eur")

    fields = await fields_of(await connect())

    assert fields["currency"] == "eur"
    assert fields["balance"] == "€12.34"
    assert fields["mrr"] == "€19.90"
    assert fields["last_charge_amount"] == "€19.90"
    assert fields["lifetime_value"] == "€19.90"


async def test_zero_decimal_yen(fake_stripe: FakeStripe, connect: Connect) -> None:
    ada = fake_stripe.add_customer(EMAIL, currency="jpy", balance=1500)
    fake_stripe.add_subscription(ada, [fake_stripe.item(12_000, currency="jpy", interval="year")])
    fake_stripe.add_charge(ada, 12_000, currency="jpy")

    fields = await fields_of(await connect())

    assert fields["balance"] == "1500 JPY"
    assert fields["mrr"] == "1000 JPY"
    assert fields["last_charge_amount"] == "12000 JPY"
    assert fields["lifetime_value"] == "12000 JPY"


async def test_charges_with_refunds_and_a_failure(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    ada = fake_stripe.add_customer(EMAIL)
    fake_stripe.add_charge(ada, 5000, created=T0)
    fake_stripe.add_charge(ada, 2000, amount_refunded=500, created=T0 + DAY)
    fake_stripe.add_charge(ada, 1000, amount_refunded=1000, created=T0 + 2 * DAY)
    fake_stripe.add_charge(ada, 3000, status="failed", created=T0 + 3 * DAY)

    fields = await fields_of(await connect())

    assert fields["charges_count"] == 4
    assert fields["lifetime_value"] == "$65.00"
    assert fields["first_charge_at"] == "2023-11-14T22:13:20Z"
    assert fields["last_charge_at"] == "2023-11-17T22:13:20Z"
    assert fields["last_charge_status"] == "failed"
    assert fields["last_charge_amount"] == "$30.00"


async def test_max_charges_limits_what_is_counted(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    ada = fake_stripe.add_customer(EMAIL)
    for day in range(5):
        fake_stripe.add_charge(ada, 1000, created=T0 + day * DAY)

    fields = await fields_of(await connect(max_charges=2))

    assert fields["charges_count"] == 2
    assert fields["lifetime_value"] == "$20.00"
    assert fields["first_charge_at"] == "2023-11-17T22:13:20Z"


async def test_several_customers_for_one_email_uses_the_newest(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    newer = fake_stripe.add_customer(EMAIL, created=T0 + DAY, id="cus_new")
    older = fake_stripe.add_customer(EMAIL, created=T0, id="cus_old")
    fake_stripe.add_subscription(older, [fake_stripe.item(9900, nickname="Old plan")])
    fake_stripe.add_subscription(newer, [fake_stripe.item(1900, nickname="New plan")])
    fake_stripe.add_customer("someone.else@example.com", created=T0 + 2 * DAY)

    fields = await fields_of(await connect())

    assert fields["id"] == "cus_new"
    assert fields["customers_count"] == 2
    assert fields["plan"] == "New plan"


async def test_unknown_email_is_not_found_after_one_call(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    fake_stripe.add_customer("someone.else@example.com")

    outcome = await (await connect()).fetch("nobody@example.com")

    assert outcome.status == "not_found"
    assert outcome.fields is None
    assert fake_stripe.total_requests == 1


async def test_known_customer_costs_the_documented_three_calls(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    ada = fake_stripe.add_customer(EMAIL)
    fake_stripe.add_subscription(ada, [fake_stripe.item(1000)])
    fake_stripe.add_charge(ada, 1000)

    await fields_of(await connect())

    assert fake_stripe.requests == {"/v1/customers": 1, "/v1/subscriptions": 1, "/v1/charges": 1}
    subscriptions_query = next(q for path, q in fake_stripe.queries if path == "/v1/subscriptions")
    assert "status=all" in subscriptions_query
    assert "data.items.data.price.product" in subscriptions_query


async def test_wrong_key_is_an_error_and_check_names_it(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    fake_stripe.add_customer(EMAIL)
    connector = await connect(api_key="sk_test_wrong_key_123")

    outcome = await connector.fetch(EMAIL)
    with pytest.raises(FatalError) as raised:
        await connector.check()

    assert outcome.status == "error"
    assert outcome.attempts == 1
    assert str(raised.value) == "stripe: invalid API key"
    assert "sk_test_wrong_key_123" not in repr(raised.value)


async def test_check_passes_with_a_good_key(fake_stripe: FakeStripe, connect: Connect) -> None:
    await (await connect()).check()

    assert fake_stripe.requests == {"/v1/customers": 1}


async def test_rate_limited_once_then_answered(fake_stripe: FakeStripe, connect: Connect) -> None:
    fake_stripe.add_customer(EMAIL, id="cus_ada")
    fake_stripe.fail_429(times=1, retry_after="0")

    outcome = await (await connect()).fetch(EMAIL)

    assert outcome.status == "ok"
    assert outcome.fields is not None
    assert outcome.fields["id"] == "cus_ada"
    assert outcome.attempts == 2
    assert fake_stripe.requests["/v1/customers"] == 2


async def test_rate_limited_in_the_second_round_trip_is_retried(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    ada = fake_stripe.add_customer(EMAIL)
    fake_stripe.add_charge(ada, 1000)
    fake_stripe.fail_429(times=1, path="/v1/charges")

    fields = await fields_of(await connect())

    assert fields["charges_count"] == 1
    assert fake_stripe.requests == {"/v1/customers": 2, "/v1/subscriptions": 2, "/v1/charges": 2}


async def test_persistent_server_error_is_an_error_after_the_retries(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    fake_stripe.add_customer(EMAIL)
    fake_stripe.fail_500()

    outcome = await (await connect(retries=2)).fetch(EMAIL)

    assert outcome.status == "error"
    assert outcome.fields is None
    assert outcome.attempts == 3
    assert fake_stripe.requests["/v1/customers"] == 3


async def test_should_retry_false_is_not_retried(fake_stripe: FakeStripe, connect: Connect) -> None:
    fake_stripe.add_customer(EMAIL)
    fake_stripe.fail(503, times=None, headers={"Stripe-Should-Retry": "false"})

    outcome = await (await connect()).fetch(EMAIL)

    assert outcome.status == "error"
    assert outcome.attempts == 1
    assert fake_stripe.total_requests == 1


async def test_refused_connection_is_unavailable(connect: Connect) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connector = await connect(api_base=f"http://127.0.0.1:{port}", retries=0)

    outcome = await connector.fetch(EMAIL)
    with pytest.raises(UnavailableError):
        await connector.check()

    assert outcome.status == "unavailable"


async def test_live_key_gives_the_live_dashboard_url(
    fake_stripe: FakeStripe, connect: Connect
) -> None:
    fake_stripe.key = "rk_live_fake"
    fake_stripe.add_customer(EMAIL, id="cus_live")

    fields = await fields_of(await connect())

    assert fields["dashboard_url"] == "https://dashboard.stripe.com/customers/cus_live"


async def test_no_log_line_carries_the_email(
    fake_stripe: FakeStripe, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    fake_stripe.add_customer(EMAIL)
    connector = await connect()
    caplog.set_level(logging.DEBUG)

    await fields_of(connector)
    await connector.fetch("nobody@example.com")

    assert all("example.com" not in record.getMessage() for record in caplog.records)
