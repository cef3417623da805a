"""The stripe connector through the official library against a Stripe-shaped local server.

Every object comes from Stripe's published fixtures (``tests/support/stripe_objects.py``).
What each field must say follows Stripe's API reference:

- customers by email, case-sensitive: https://docs.stripe.com/api/customers/list
- balance (negative is a credit, positive is owed):
  https://docs.stripe.com/api/customers/object#customer_object-balance
- subscription status, cancel_at, cancel_at_period_end, canceled_at, pause_collection,
  trial_end, discounts: https://docs.stripe.com/api/subscriptions/object
- charges amount_captured, amount_refunded, refunded, captured, disputed, failure_message:
  https://docs.stripe.com/api/charges/object ; disputes by charge:
  https://docs.stripe.com/api/disputes/list
- open invoices: https://docs.stripe.com/api/invoices/list (status=open), amount_remaining,
  hosted_invoice_url, next_payment_attempt: https://docs.stripe.com/api/invoices/object
- default payment method: https://docs.stripe.com/api/customers/object (invoice_settings)
- MRR: https://docs.stripe.com/billing/subscriptions/analytics/glossary
- lists and pages: https://docs.stripe.com/api/pagination ; expansion limit of four
  levels: https://docs.stripe.com/api/expanding_objects
- 429, Retry-After and limits: https://docs.stripe.com/rate-limits ; Stripe-Should-Retry:
  https://docs.stripe.com/error-low-level
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from aggregator.emails import Email
from aggregator.errors import FatalError, UnavailableError
from connectors.stripe import StripeConnector, StripeSettings
from tests.support.fake_stripe import ScriptedStripe
from tests.support.stripe_objects import DAY, MONTH, T0, StripeObjects

NOW = T0 + 10 * DAY  # 2023-11-24T22:13:20Z
EMAIL = "ada@example.com"

Connect = Callable[..., Awaitable[StripeConnector]]


@pytest.fixture
def objects(fake_stripe: ScriptedStripe) -> StripeObjects:
    """Builders of fixture-derived objects stored in the fake account."""
    return StripeObjects(fake_stripe)


@pytest.fixture
async def connect(fake_stripe: ScriptedStripe) -> AsyncIterator[Connect]:
    """Open connectors against the fake on one shared session, their clock at NOW."""
    session = aiohttp.ClientSession()
    opened: list[StripeConnector] = []

    async def make(**overrides: Any) -> StripeConnector:
        values = {"type": "stripe", "api_key": fake_stripe.key, "api_base": fake_stripe.url}
        connector = StripeConnector("stripe", StripeSettings.model_validate(values | overrides))
        connector.clock = lambda: NOW
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


def monthly(objects: StripeObjects, amount: int, **price: Any) -> dict[str, Any]:
    return objects.item(objects.price(amount, **price))


# --- one ordinary paying customer ---------------------------------------------------------


async def test_a_paying_customer_gives_every_field(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL, created=T0, id="cus_ada")
    objects.payment_method(ada, brand="visa", last4="4242", exp_month=8, exp_year=2030)
    objects.subscription(ada, [monthly(objects, 2900, product="Pro")], id="sub_ada")
    objects.charge(ada, 2900, created=T0 + 20)

    fields = await fields_of(await connect())

    assert fields == {
        "id": "cus_ada",
        "customer_ids": ["cus_ada"],
        "customers_count": 1,
        "created_at": "2023-11-14T22:13:20Z",
        "currency": "usd",
        "balance": "$0.00",
        "balance_text": None,
        "delinquent": False,
        "dashboard_url": "https://dashboard.stripe.com/test/customers/cus_ada",
        "subscriptions_count": 1,
        "subscription_status": "active",
        "subscription_id": "sub_ada",
        "plan": "Pro",
        "mrr": "$29.00",
        "mrr_excludes_metered": False,
        "current_period_end": "2023-12-14T22:13:20Z",
        "renews_at": "2023-12-14T22:13:20Z",
        "ends_at": None,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "ended_at": None,
        "trial_end": None,
        "trial_days_left": None,
        "collection_paused": False,
        "pause_collection_behavior": None,
        "pause_collection_resumes_at": None,
        "coupon": None,
        "discount": None,
        "discount_ends_at": None,
        "payment_method_type": "card",
        "payment_method_brand": "visa",
        "payment_method_last4": "4242",
        "payment_method_expires": "08/2030",
        "payment_method_expired": False,
        "charges_count": 1,
        "charges_truncated": False,
        "last_charge_amount": "$29.00",
        "last_charge_amount_refunded": None,
        "last_charge_at": "2023-11-14T22:13:40Z",
        "last_charge_status": "succeeded",
        "first_charge_at": "2023-11-14T22:13:40Z",
        "lifetime_value": "$29.00",
        "total_refunded": None,
        "last_failed_payment_at": None,
        "last_failed_payment_amount": None,
        "last_failed_payment_message": None,
        "disputes_count": 0,
        "open_dispute_status": None,
        "open_dispute_reason": None,
        "open_dispute_amount": None,
        "open_dispute_evidence_due_by": None,
        "open_invoices_count": 0,
        "open_invoices_amount_due": None,
        "past_due_invoices_count": 0,
        "oldest_open_invoice_url": None,
        "next_payment_attempt": None,
    }


async def test_a_known_customer_costs_four_calls_in_two_round_trips(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    objects.subscription(ada, [monthly(objects, 1000, nickname="Basic")])
    objects.charge(ada, 1000)
    fake_stripe.latency = 0.2

    await fields_of(await connect())

    assert fake_stripe.requests == {
        "/v1/customers": 1,
        "/v1/subscriptions": 1,
        "/v1/charges": 1,
        "/v1/invoices": 1,
    }
    assert fake_stripe.round_trips() == 2
    expansions = [q for _, q in fake_stripe.queries if "expand" in q]
    assert expansions, "the default payment method and discounts come expanded"


async def test_product_names_are_asked_once_then_kept(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    """Stripe refuses data.items.data.price.product (five levels): a third round trip
    names the products, once per catalog_ttl."""
    for email in ("ada@example.com", "bob@example.com"):
        customer = objects.customer(email)
        objects.subscription(customer, [monthly(objects, 1000, product="Team")])
    connector = await connect()
    fake_stripe.latency = 0.2

    first = await fields_of(connector, "ada@example.com")
    rounds_cold = fake_stripe.round_trips()
    second = await fields_of(connector, "bob@example.com")

    assert first["plan"] == second["plan"] == "Team"
    assert rounds_cold == 3
    assert fake_stripe.requests["/v1/products"] == 1


async def test_every_call_of_a_burst_goes_through_the_process_wide_limits(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    emails = [f"user{n}@example.com" for n in range(20)]
    for email in emails:
        customer = objects.customer(email)
        objects.subscription(customer, [monthly(objects, 1000, product="Team")])
        objects.charge(customer, 1000)
    fast = {"rate_limit": 1000, "endpoint_rate_limit": 1000}
    first, second = await connect(**fast), await connect(**fast)

    outcomes = await asyncio.gather(
        *((first if n % 2 else second).fetch(email) for n, email in enumerate(emails))
    )

    assert [o.status for o in outcomes] == ["ok"] * 20
    assert first.limits is second.limits
    assert first.limits.calls == fake_stripe.total_requests


async def test_unknown_email_is_not_found_after_one_call(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    objects.customer("someone.else@example.com")

    outcome = await (await connect()).fetch("nobody@example.com")

    assert outcome.status == "not_found"
    assert outcome.fields is None
    assert fake_stripe.total_requests == 1


# --- who the customer is -------------------------------------------------------------------


async def test_an_email_stored_with_capitals_is_found(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    grace = objects.customer("Grace.Hopper@Example.com", id="cus_grace")
    objects.subscription(grace, [monthly(objects, 4900, nickname="Pro")])
    connector = await connect()

    as_groove_sends = await connector.fetch(
        Email("grace.hopper@example.com", "Grace.Hopper@Example.com")
    )
    lower_case_only = await connector.fetch("grace.hopper@example.com")

    assert as_groove_sends.fields is not None
    assert as_groove_sends.fields["id"] == "cus_grace"
    assert as_groove_sends.fields["mrr"] == "$49.00"
    assert lower_case_only.status == "not_found", "Stripe's email filter is case-sensitive"
    sent = [q for path, q in fake_stripe.queries if path == "/v1/customers"]
    assert sum("Grace.Hopper" in q for q in sent) == 1
    assert sum("grace.hopper" in q for q in sent) == 2


async def test_both_spellings_of_an_email_are_merged_by_customer_id(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    upper = objects.customer("Ada@Example.com", created=T0, id="cus_upper")
    objects.customer(EMAIL, created=T0 + DAY, id="cus_lower")
    objects.subscription(upper, [monthly(objects, 2000, nickname="Pro")])

    fields = await fields_of(await connect(), Email(EMAIL, "Ada@Example.com"))

    assert fields["customers_count"] == 2
    assert fields["customer_ids"] == ["cus_upper", "cus_lower"]
    assert fields["id"] == "cus_upper"
    assert fake_stripe.requests["/v1/customers"] == 2


async def test_two_customers_with_one_email_are_summed_up(
    objects: StripeObjects, connect: Connect
) -> None:
    """Checkout makes a customer per session: the newest record may hold nothing."""
    paying = objects.customer(EMAIL, created=T0, id="cus_paying")
    objects.customer(EMAIL, created=T0 + 5 * DAY, id="cus_checkout")
    objects.subscription(paying, [monthly(objects, 9800, nickname="Business")])
    objects.charge(paying, 9800)
    objects.charge(paying, 9800)
    objects.customer("someone.else@example.com", created=T0 + 6 * DAY)

    fields = await fields_of(await connect())

    assert fields["id"] == "cus_paying"
    assert fields["dashboard_url"].endswith("/customers/cus_paying")
    assert fields["customer_ids"] == ["cus_paying", "cus_checkout"]
    assert fields["customers_count"] == 2
    assert fields["subscription_status"] == "active"
    assert fields["plan"] == "Business"
    assert fields["mrr"] == "$98.00"
    assert fields["charges_count"] == 2
    assert fields["lifetime_value"] == "$196.00"


async def test_max_customers_bounds_what_is_summed(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    for day in range(4):
        objects.customer(EMAIL, created=T0 + day * DAY)

    fields = await fields_of(await connect(max_customers=2))

    assert fields["customers_count"] == 4
    assert fake_stripe.requests["/v1/subscriptions"] == 2


@pytest.mark.parametrize(
    ("balance", "shown", "words"),
    [(-2500, "-$25.00", "$25.00 credit"), (1234, "$12.34", "$12.34 owed"), (0, "$0.00", None)],
)
async def test_balance_is_worded_with_stripes_sign(
    objects: StripeObjects, connect: Connect, balance: int, shown: str, words: str | None
) -> None:
    objects.customer(EMAIL, balance=balance)

    fields = await fields_of(await connect())

    assert (fields["balance"], fields["balance_text"]) == (shown, words)


async def test_any_delinquent_record_makes_the_customer_delinquent(
    objects: StripeObjects, connect: Connect
) -> None:
    objects.customer(EMAIL, created=T0, delinquent=True)
    objects.customer(EMAIL, created=T0 + DAY)

    assert (await fields_of(await connect()))["delinquent"] is True


# --- subscriptions and MRR -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "interval_count", "unit_amount", "quantity", "mrr"),
    [
        ("year", 1, 120_000, 1, "$100.00"),
        ("month", 3, 9_000, 1, "$30.00"),
        ("month", 1, 1_000, 5, "$50.00"),
        ("week", 1, 1_000, 2, "$86.67"),
        ("day", 1, 100, 1, "$30.44"),
    ],
)
async def test_mrr_is_normalized_to_a_month(
    objects: StripeObjects,
    connect: Connect,
    interval: str,
    interval_count: int,
    unit_amount: int,
    quantity: int,
    mrr: str,
) -> None:
    ada = objects.customer(EMAIL)
    price = objects.price(unit_amount, interval=interval, interval_count=interval_count)
    objects.subscription(ada, [objects.item(price, quantity)])

    assert (await fields_of(await connect()))["mrr"] == mrr


async def test_every_item_is_named_and_counted(objects: StripeObjects, connect: Connect) -> None:
    ada = objects.customer(EMAIL)
    pro = objects.item(objects.price(2900, product="Pro"))
    seats = objects.item(objects.price(500, product="Extra seat"), 3)
    objects.subscription(ada, [pro, seats])

    fields = await fields_of(await connect())

    assert fields["plan"] == "Pro + 3 x Extra seat"
    assert fields["mrr"] == "$44.00"


async def test_several_subscriptions_only_active_and_past_due_make_mrr(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    objects.subscription(ada, [monthly(objects, 2900, nickname="Pro")], created=T0)
    objects.subscription(ada, [monthly(objects, 1000, nickname="Add-on")], status="past_due")
    objects.subscription(ada, [monthly(objects, 5000, nickname="Old")], status="unpaid")
    objects.subscription(ada, [monthly(objects, 7000, nickname="Trial")], status="trialing")
    objects.subscription(ada, [monthly(objects, 9900, nickname="Gone")], status="canceled")

    fields = await fields_of(await connect())

    assert fields["subscriptions_count"] == 5
    assert fields["mrr"] == "$39.00"
    assert fields["subscription_status"] == "trialing", "the newest live one"
    assert fields["plan"] == "Trial"


async def test_a_trial_is_not_mrr_and_says_how_many_days_are_left(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    trial_end = NOW + 5 * DAY - 3600
    item = objects.item(objects.price(2000, nickname="Starter"), period_end=trial_end)
    objects.subscription(ada, [item], status="trialing", trial_start=T0, trial_end=trial_end)

    fields = await fields_of(await connect())

    assert fields["subscription_status"] == "trialing"
    assert fields["mrr"] == "$0.00"
    assert fields["trial_end"] == "2023-11-29T21:13:20Z"
    assert fields["trial_days_left"] == 5
    assert fields["renews_at"] == "2023-11-29T21:13:20Z"
    assert fields["ends_at"] is None


@pytest.mark.parametrize(
    ("status", "mrr", "renews"), [("past_due", "$29.00", True), ("unpaid", "$0.00", False)]
)
async def test_past_due_counts_and_unpaid_does_not(
    objects: StripeObjects, connect: Connect, status: str, mrr: str, renews: bool
) -> None:
    ada = objects.customer(EMAIL, delinquent=True)
    objects.subscription(ada, [monthly(objects, 2900)], status=status)

    fields = await fields_of(await connect())

    assert fields["subscription_status"] == status
    assert fields["mrr"] == mrr
    assert (fields["renews_at"] is not None) is renews
    assert fields["delinquent"] is True


async def test_cancel_at_period_end_ends_and_does_not_renew(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    period_end = T0 + MONTH
    objects.subscription(
        ada,
        [objects.item(objects.price(2900), period_end=period_end)],
        cancel_at_period_end=True,
        cancel_at=period_end,
        canceled_at=NOW - DAY,
    )

    fields = await fields_of(await connect())

    assert fields["subscription_status"] == "active"
    assert fields["cancel_at_period_end"] is True
    assert fields["renews_at"] is None
    assert fields["ends_at"] == fields["cancel_at"] == "2023-12-14T22:13:20Z"
    assert fields["canceled_at"] == "2023-11-23T22:13:20Z"
    assert fields["mrr"] == "$29.00", "active until it ends"


async def test_cancel_at_period_end_before_2025_without_cancel_at(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    sub = objects.subscription(ada, [monthly(objects, 2900)], cancel_at_period_end=True)
    sub["current_period_end"] = T0 + 20 * DAY  # the pre-2025-03-31 shape

    fields = await fields_of(await connect())

    assert fields["ends_at"] == fields["current_period_end"] == "2023-12-04T22:13:20Z"
    assert fields["renews_at"] is None


async def test_cancel_at_a_date_before_the_period_ends(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    objects.subscription(ada, [monthly(objects, 2900)], cancel_at=NOW + 5 * DAY)

    fields = await fields_of(await connect())

    assert fields["cancel_at_period_end"] is False
    assert fields["cancel_at"] == fields["ends_at"] == "2023-11-29T22:13:20Z"
    assert fields["renews_at"] is None


async def test_cancel_at_a_date_after_one_more_renewal(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    objects.subscription(ada, [monthly(objects, 2900)], cancel_at=T0 + 2 * MONTH)

    fields = await fields_of(await connect())

    assert fields["renews_at"] == "2023-12-14T22:13:20Z"
    assert fields["ends_at"] == "2024-01-13T22:13:20Z"


async def test_a_canceled_subscription_says_when_it_ended(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    objects.subscription(
        ada,
        [monthly(objects, 5000, product="Team")],
        status="canceled",
        canceled_at=T0 + DAY,
        ended_at=T0 + DAY,
    )

    fields = await fields_of(await connect())

    assert fields["subscription_status"] == "canceled"
    assert fields["plan"] == "Team"
    assert fields["mrr"] == "$0.00"
    assert fields["ended_at"] == fields["canceled_at"] == "2023-11-15T22:13:20Z"
    assert fields["renews_at"] is None and fields["ends_at"] is None


async def test_paused_collection_is_shown(objects: StripeObjects, connect: Connect) -> None:
    ada = objects.customer(EMAIL)
    pause = {"behavior": "void", "resumes_at": NOW + 7 * DAY}
    objects.subscription(ada, [monthly(objects, 2900)], pause_collection=pause)

    fields = await fields_of(await connect())

    assert fields["collection_paused"] is True
    assert fields["pause_collection_behavior"] == "void"
    assert fields["pause_collection_resumes_at"] == "2023-12-01T22:13:20Z"


@pytest.mark.parametrize(
    ("currency", "amount", "interval", "mrr", "charge"),
    [
        ("jpy", 12_000, "year", "1000 JPY", "12000 JPY"),
        ("bhd", 12_345, "month", "12.345 BHD", "12.345 BHD"),
        ("eur", 1_990, "month", "€19.90", "€19.90"),
        ("gbp", 999, "month", "£9.99", "£9.99"),
    ],
)
async def test_money_in_the_customers_currency(
    objects: StripeObjects,
    connect: Connect,
    currency: str,
    amount: int,
    interval: str,
    mrr: str,
    charge: str,
) -> None:
    ada = objects.customer(EMAIL, currency=currency)
    price = objects.price(amount, currency=currency, interval=interval)
    objects.subscription(ada, [objects.item(price)])
    objects.charge(ada, amount, currency=currency)

    fields = await fields_of(await connect())

    assert fields["currency"] == currency
    assert fields["mrr"] == mrr
    assert fields["last_charge_amount"] == fields["lifetime_value"] == charge


async def test_metered_items_are_left_out_of_mrr_and_say_so(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    base = objects.item(objects.price(2900, product="Pro"))
    usage = objects.item(objects.price(5, product="API calls", usage_type="metered"), None)
    objects.subscription(ada, [base, usage])

    fields = await fields_of(await connect())

    assert fields["plan"] == "Pro + API calls"
    assert fields["mrr"] == "$29.00"
    assert fields["mrr_excludes_metered"] is True


@pytest.mark.parametrize(("mode", "mrr"), [("volume", "$96.00"), ("graduated", "$116.00")])
async def test_a_tiered_price_is_priced_from_its_tiers(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect, mode: str, mrr: str
) -> None:
    tiers: list[dict[str, Any]] = [
        {"up_to": 10, "unit_amount": 1000, "unit_amount_decimal": "1000", "flat_amount": None},
        {"up_to": None, "unit_amount": 800, "unit_amount_decimal": "800", "flat_amount": None},
    ]
    ada = objects.customer(EMAIL)
    price = objects.price(None, nickname="Seats", tiers=tiers, tiers_mode=mode)
    objects.subscription(ada, [objects.item(price, 12)])

    fields = await fields_of(await connect())

    assert fields["mrr"] == mrr
    assert fields["plan"] == "12 x Seats"
    assert fake_stripe.requests[f"/v1/prices/{price['id']}"] == 1


async def test_a_tiered_price_whose_tiers_cannot_be_read_gives_no_mrr(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    price = objects.price(None, nickname="Seats", tiers=[{"up_to": None}], tiers_mode="volume")
    objects.subscription(ada, [objects.item(price, 3)])
    fake_stripe._tiers.pop(price["id"])  # a price Stripe returns without its tiers

    fields = await fields_of(await connect())

    assert fields["mrr"] is None, "unknown, never a wrong $0.00"


async def test_a_forever_percent_coupon_lowers_mrr(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    coupon = objects.coupon(percent_off=25.5, duration="forever", name="Launch")
    discount = objects.discount(coupon, customer=ada)
    objects.subscription(ada, [monthly(objects, 2900)], discounts=[discount])

    fields = await fields_of(await connect())

    assert fields["mrr"] == "$21.61"
    assert fields["coupon"] == "Launch"
    assert fields["discount"] == "25.5% off forever"
    assert fields["discount_ends_at"] is None


async def test_a_repeating_coupon_lowers_mrr_while_in_effect(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    coupon = objects.coupon(amount_off=500, currency="usd", duration="repeating",
                            duration_in_months=3)  # fmt: skip
    discount = objects.discount(coupon, start=T0, end=T0 + 3 * MONTH)
    objects.subscription(ada, [monthly(objects, 2900)], discounts=[discount])

    fields = await fields_of(await connect())

    assert fields["mrr"] == "$24.00"
    assert fields["discount"] == "$5.00 off for 3 months"
    assert fields["discount_ends_at"] == "2024-02-12T22:13:20Z"


async def test_an_expired_or_once_coupon_leaves_mrr_alone(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    over = objects.discount(
        objects.coupon(percent_off=50, duration="repeating", duration_in_months=1),
        start=T0 - 2 * MONTH,
        end=T0 - MONTH,
    )
    once = objects.discount(objects.coupon(percent_off=10, duration="once", name="Welcome"))
    objects.subscription(ada, [monthly(objects, 2900)], discounts=[over, once])

    fields = await fields_of(await connect())

    assert fields["mrr"] == "$29.00"
    assert fields["discount"] == "10% off once"
    assert fields["coupon"] == "Welcome"


async def test_a_customer_wide_discount_applies_to_its_subscriptions(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    coupon = objects.coupon(percent_off=20, duration="forever", name="Partner")
    ada["discount"] = objects.discount(coupon, customer=ada)
    objects.subscription(ada, [monthly(objects, 5000)])

    fields = await fields_of(await connect())

    assert fields["mrr"] == "$40.00"
    assert fields["discount"] == "20% off forever"


async def test_an_item_discount_is_read_through_its_coupon(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    """Stripe cannot expand data.items.data.discounts.source.coupon (six levels)."""
    ada = objects.customer(EMAIL)
    coupon = objects.coupon(percent_off=50, duration="forever", name="Half seats")
    seats = objects.item(
        objects.price(1000, product="Seat"), 2, discounts=[objects.discount(coupon)]
    )
    objects.subscription(ada, [monthly(objects, 2900, product="Pro"), seats])

    fields = await fields_of(await connect())

    assert fields["mrr"] == "$39.00"
    assert fields["discount"] == "50% off forever"
    assert fake_stripe.requests[f"/v1/coupons/{coupon['id']}"] == 1


async def test_a_deleted_coupon_leaves_mrr_unknown_not_the_profile(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    coupon = objects.coupon(percent_off=50, duration="forever")
    seats = objects.item(
        objects.price(1000, product="Seat"), 2, discounts=[objects.discount(coupon)]
    )
    objects.subscription(ada, [seats])
    del fake_stripe.coupons[coupon["id"]]

    fields = await fields_of(await connect())

    assert fields["mrr"] is None
    assert fields["coupon"] == coupon["id"]
    assert fields["plan"] == "2 x Seat"


async def test_a_product_stripe_no_longer_lists_is_named_by_its_id_and_asked_once(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    price = objects.price(1000, product="Gone")
    objects.subscription(ada, [objects.item(price)])
    fake_stripe.products.clear()
    connector = await connect()

    first = await fields_of(connector)
    await fields_of(connector)

    assert first["plan"] == price["product"]
    assert first["mrr"] == "$10.00"
    assert fake_stripe.requests["/v1/products"] == 1


async def test_an_api_version_before_2025_09_30_reads_embedded_coupons(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    sub = objects.subscription(ada, [monthly(objects, 4000)])
    coupon = objects.coupon(percent_off=50, duration="forever")
    sub["discount"] = {"object": "discount", "coupon": coupon, "start": T0, "end": None}
    sub["current_period_end"] = T0 + MONTH

    fields = await fields_of(await connect(api_version="2024-06-20"))

    assert fields["mrr"] == "$20.00"
    assert fields["discount"] == "50% off forever"
    assert not any("source.coupon" in q for _, q in fake_stripe.queries)


async def test_no_expansion_goes_past_four_levels(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    objects.subscription(ada, [monthly(objects, 2900)])

    await fields_of(await connect())

    from urllib.parse import parse_qsl

    expanded = [v for _, q in fake_stripe.queries for k, v in parse_qsl(q) if "expand" in k]
    assert expanded
    assert max(len(path.split(".")) for path in expanded) <= 4


# --- payment method ----------------------------------------------------------------------


async def test_a_legacy_card_source_is_the_payment_method(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    objects.card(ada, brand="MasterCard", last4="4444")

    fields = await fields_of(await connect())

    assert fields["payment_method_brand"] == "mastercard"
    assert fields["payment_method_last4"] == "4444"
    assert fields["payment_method_expires"] == "08/2030"


async def test_an_expired_card_says_so(objects: StripeObjects, connect: Connect) -> None:
    ada = objects.customer(EMAIL)
    objects.payment_method(ada, exp_month=10, exp_year=2023)

    fields = await fields_of(await connect())

    assert fields["payment_method_expires"] == "10/2023"
    assert fields["payment_method_expired"] is True


async def test_the_subscriptions_own_payment_method_comes_first(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    objects.payment_method(ada, last4="4242")
    own = objects.payment_method(ada, brand="amex", last4="0005", default=False)
    objects.subscription(ada, [monthly(objects, 2900)], default_payment_method=own["id"])

    fields = await fields_of(await connect())

    assert (fields["payment_method_brand"], fields["payment_method_last4"]) == ("amex", "0005")


# --- charges, refunds, disputes ----------------------------------------------------------


async def test_refunds_failures_and_authorizations(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    objects.charge(ada, 5000, created=T0)
    objects.charge(ada, 2000, refunded=500, created=T0 + DAY)
    objects.charge(ada, 1000, refunded=1000, created=T0 + 2 * DAY)
    objects.charge(ada, 7000, captured=False, created=T0 + 3 * DAY)
    objects.charge(
        ada,
        3000,
        status="failed",
        failure_message="Your card has insufficient funds.",
        created=T0 + 4 * DAY,
    )

    fields = await fields_of(await connect())

    assert fields["charges_count"] == 5
    assert fields["lifetime_value"] == "$65.00", "captured minus refunded, succeeded only"
    assert fields["total_refunded"] == "$15.00"
    assert fields["last_charge_status"] == "failed"
    assert fields["last_failed_payment_at"] == "2023-11-18T22:13:20Z"
    assert fields["last_failed_payment_amount"] == "$30.00"
    assert fields["last_failed_payment_message"] == "Your card has insufficient funds."
    assert fields["first_charge_at"] == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize(
    ("refunded", "captured", "status", "refunded_shown"),
    [
        (2900, True, "refunded", "$29.00"),
        (900, True, "partially_refunded", "$9.00"),
        (0, False, "uncaptured", None),
    ],
)
async def test_the_newest_charge_says_refunded_or_uncaptured(
    objects: StripeObjects,
    connect: Connect,
    refunded: int,
    captured: bool,
    status: str,
    refunded_shown: str | None,
) -> None:
    ada = objects.customer(EMAIL)
    objects.charge(ada, 2900, refunded=refunded, captured=captured)

    fields = await fields_of(await connect())

    assert fields["last_charge_status"] == status
    assert fields["last_charge_amount"] == "$29.00"
    assert fields["last_charge_amount_refunded"] == refunded_shown


async def test_an_open_dispute_is_shown(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    won = objects.charge(ada, 1000, created=T0)
    objects.dispute(won, status="won")
    disputed = objects.charge(ada, 4900, created=T0 + DAY)
    dispute = objects.dispute(disputed, status="needs_response", reason="fraudulent")
    objects.charge(ada, 4900, created=T0 + 2 * DAY)

    fields = await fields_of(await connect())

    assert fields["disputes_count"] == 2
    assert fields["open_dispute_status"] == "needs_response"
    assert fields["open_dispute_reason"] == "fraudulent"
    assert fields["open_dispute_amount"] == "$49.00"
    assert fields["open_dispute_evidence_due_by"] == fields_iso(dispute["created"] + 7 * DAY)
    assert fake_stripe.requests["/v1/disputes"] == 2


def fields_iso(timestamp: int) -> str:
    from connectors.stripe_fields import iso

    value = iso(timestamp)
    assert value is not None
    return value


async def test_charges_are_read_page_after_page(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    for n in range(250):
        objects.charge(ada, 100, created=T0 + n)

    fields = await fields_of(await connect(timeout=30))

    assert fields["charges_count"] == 250
    assert fields["charges_truncated"] is False
    assert fields["lifetime_value"] == "$250.00"
    assert fields["first_charge_at"] == "2023-11-14T22:13:20Z"
    assert fake_stripe.requests["/v1/charges"] == 3


async def test_max_charges_cuts_the_history_and_says_so(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    for n in range(250):
        objects.charge(ada, 100, created=T0 + n)

    fields = await fields_of(await connect(max_charges=120, timeout=30))

    assert fields["charges_count"] == 120
    assert fields["charges_truncated"] is True
    assert fields["lifetime_value"] == "$120.00"
    assert fake_stripe.requests["/v1/charges"] == 2


async def test_paging_stops_while_the_deadline_still_leaves_time_to_answer(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    """Each answer takes 0.4 s: after the first page of charges (0.8 s in), another page
    would not leave time to answer within 1.5 s, so the history is cut, and says so."""
    ada = objects.customer(EMAIL)
    for n in range(250):
        objects.charge(ada, 100, created=T0 + n)
    fake_stripe.latency = 0.4

    fields = await fields_of(await connect(timeout=1.5))

    assert fields["charges_count"] == 100
    assert fields["charges_truncated"] is True
    assert fake_stripe.requests["/v1/charges"] == 1


async def test_failed_charges_do_not_use_up_the_budget(
    objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    for n in range(50):
        objects.charge(ada, 1000, created=T0 + n)
    for n in range(150):
        objects.charge(ada, 1000, status="failed", created=T0 + 100 + n)

    fields = await fields_of(await connect(max_charges=50, timeout=30))

    assert fields["lifetime_value"] == "$500.00"
    assert fields["charges_truncated"] is False
    assert fields["charges_count"] == 200


# --- invoices ----------------------------------------------------------------------------


async def test_open_and_past_due_invoices(objects: StripeObjects, connect: Connect) -> None:
    ada = objects.customer(EMAIL)
    oldest = objects.invoice(ada, 2900, attempt_count=2, next_payment_attempt=NOW + 3 * DAY)
    objects.invoice(ada, 10_000, due_date=NOW - DAY)
    objects.invoice(ada, 500, due_date=NOW + 10 * DAY)
    objects.invoice(ada, 7000, status="paid")

    fields = await fields_of(await connect())

    assert fields["open_invoices_count"] == 3
    assert fields["open_invoices_amount_due"] == "$134.00"
    assert fields["past_due_invoices_count"] == 2
    assert fields["oldest_open_invoice_url"] == oldest["hosted_invoice_url"]
    assert fields["next_payment_attempt"] == "2023-11-27T22:13:20Z"


# --- failures ----------------------------------------------------------------------------


async def test_a_429_retries_only_the_call_that_failed(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    objects.charge(ada, 1000)
    fake_stripe.fail_429(times=1, retry_after="0", path="/v1/charges")

    fields = await fields_of(await connect())

    assert fields["charges_count"] == 1
    assert fake_stripe.requests == {
        "/v1/customers": 1,
        "/v1/subscriptions": 1,
        "/v1/charges": 2,
        "/v1/invoices": 1,
    }


async def test_a_429_without_retry_after_is_retried_with_backoff(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    objects.customer(EMAIL, id="cus_ada")
    fake_stripe.fail_429(times=2, retry_after=None, path="/v1/customers")

    fields = await fields_of(await connect())

    assert fields["id"] == "cus_ada"
    assert fake_stripe.requests["/v1/customers"] == 3


async def test_a_retry_after_beyond_the_deadline_is_not_waited_for(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    objects.customer(EMAIL)
    fake_stripe.fail_429(times=1, retry_after="30", path="/v1/customers")

    outcome = await (await connect(timeout=2.0)).fetch(EMAIL)

    assert outcome.status == "error"
    assert outcome.elapsed < 2.0
    assert fake_stripe.requests["/v1/customers"] == 1


async def test_a_500_once_is_retried(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    ada = objects.customer(EMAIL)
    objects.subscription(ada, [monthly(objects, 2900, nickname="Pro")])
    fake_stripe.fail_500(times=1, path="/v1/subscriptions")

    fields = await fields_of(await connect())

    assert fields["plan"] == "Pro"
    assert fake_stripe.requests["/v1/subscriptions"] == 2
    assert fake_stripe.requests["/v1/customers"] == 1


async def test_a_persistent_500_is_an_error_after_the_retries(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    objects.customer(EMAIL)
    fake_stripe.fail_500()

    outcome = await (await connect(retries=2)).fetch(EMAIL)

    assert outcome.status == "error"
    assert outcome.fields is None
    assert fake_stripe.requests["/v1/customers"] == 3


async def test_should_retry_false_is_not_retried(
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    objects.customer(EMAIL)
    fake_stripe.fail(503, times=None, headers={"Stripe-Should-Retry": "false"})

    outcome = await (await connect()).fetch(EMAIL)

    assert outcome.status == "error"
    assert fake_stripe.total_requests == 1


async def test_a_refused_key_is_logged_once_and_check_names_it(
    fake_stripe: ScriptedStripe,
    objects: StripeObjects,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    objects.customer(EMAIL)
    connector = await connect(api_key="sk_test_wrong_key_123")
    caplog.set_level(logging.INFO)

    first = await connector.fetch(EMAIL)
    second = await connector.fetch(EMAIL)
    with pytest.raises(FatalError) as raised:
        await connector.check()

    assert first.status == second.status == "error"
    assert fake_stripe.requests["/v1/customers"] == 3, "a refused key is not retried"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == ["stripe: the API key was refused (401); check STRIPE_API_KEY"]
    assert "stripe: invalid API key" in str(raised.value)
    assert "STRIPE_API_KEY" in str(raised.value)
    assert all("sk_test_wrong_key_123" not in r.getMessage() for r in caplog.records)
    assert "sk_test_wrong_key_123" not in repr(raised.value)


async def test_check_passes_with_a_good_key(fake_stripe: ScriptedStripe, connect: Connect) -> None:
    await (await connect()).check()

    assert fake_stripe.requests == {"/v1/customers": 1}


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
    fake_stripe: ScriptedStripe, objects: StripeObjects, connect: Connect
) -> None:
    fake_stripe.key = "rk_live_fake"
    objects.customer(EMAIL, id="cus_live")

    fields = await fields_of(await connect())

    assert fields["dashboard_url"] == "https://dashboard.stripe.com/customers/cus_live"


async def test_no_log_line_carries_the_email(
    objects: StripeObjects, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    ada = objects.customer(EMAIL)
    objects.subscription(ada, [monthly(objects, 2900)])
    connector = await connect()
    caplog.set_level(logging.DEBUG)

    await fields_of(connector)
    await connector.fetch("nobody@example.com")

    assert all("example.com" not in record.getMessage() for record in caplog.records)
