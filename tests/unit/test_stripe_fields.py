"""The Stripe fields as pure functions of fixture-derived objects (no server).

Price amounts: ``unit_amount_decimal``, ``transform_quantity`` and tiers
(https://docs.stripe.com/api/prices/object, https://docs.stripe.com/products-prices/pricing-models#tiered-pricing);
MRR: https://docs.stripe.com/billing/subscriptions/analytics/glossary; coupons:
https://docs.stripe.com/api/coupons/object.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from connectors import stripe_mrr
from connectors.stripe_fields import (
    amounts,
    balance_text,
    charge_status,
    describe_discount,
    main_subscription,
    plan_name,
)
from tests.support.fake_stripe import FakeStripe
from tests.support.stripe_objects import T0, StripeObjects

NOW = T0 + 86_400


@pytest.fixture
def objects() -> StripeObjects:
    return StripeObjects(FakeStripe())


def tier(up_to: int | None, unit: int | None = None, flat: int | None = None) -> dict[str, Any]:
    return {
        "up_to": up_to,
        "unit_amount": unit,
        "unit_amount_decimal": None if unit is None else str(unit),
        "flat_amount": flat,
        "flat_amount_decimal": None if flat is None else str(flat),
    }


@pytest.mark.parametrize(
    ("mode", "quantity", "amount"),
    [
        ("volume", 5, 5 * 1000 + 2000),
        ("volume", 15, 15 * 700 + 0),
        ("graduated", 5, 5 * 1000 + 2000),
        ("graduated", 15, 10 * 1000 + 2000 + 5 * 700),
        ("graduated", 0, 0),
    ],
)
def test_tiered_prices(objects: StripeObjects, mode: str, quantity: int, amount: int) -> None:
    tiers = [tier(10, 1000, flat=2000), tier(None, 700)]
    item = objects.item(objects.price(None, tiers=tiers, tiers_mode=mode), quantity)

    assert stripe_mrr.period_amount(item) == amount


@pytest.mark.parametrize(("rounding", "amount"), [("up", 3 * 500), ("down", 2 * 500)])
def test_transform_quantity_packages(objects: StripeObjects, rounding: str, amount: int) -> None:
    price = objects.price(500, transform_quantity={"divide_by": 10, "round": rounding})

    assert stripe_mrr.period_amount(objects.item(price, 25)) == amount


def test_fractions_of_a_cent_stay_exact_until_rounding(objects: StripeObjects) -> None:
    price = objects.price(0)
    price["unit_amount"] = None
    price["unit_amount_decimal"] = "0.25"
    sub = objects.subscription(objects.customer("a@x.io"), [objects.item(price, 10_003)])

    assert stripe_mrr.mrr([sub], {}, NOW) == {"usd": 2501}


def test_subscriptions_in_two_currencies_are_both_shown(objects: StripeObjects) -> None:
    customer = objects.customer("a@x.io")
    usd = objects.subscription(customer, [objects.item(objects.price(1000))])
    eur = objects.subscription(customer, [objects.item(objects.price(500, currency="eur"))])

    totals = stripe_mrr.mrr([usd, eur], {}, NOW)

    assert totals == {"usd": 1000, "eur": 500}
    assert amounts(totals, "eur") == "€5.00 + $10.00"


def test_an_amount_off_coupon_in_another_currency_is_unknown(objects: StripeObjects) -> None:
    customer = objects.customer("a@x.io")
    coupon = objects.coupon(amount_off=500, currency="eur")
    discount = objects.discount(coupon)
    discount["source"]["coupon"] = coupon
    sub = objects.subscription(customer, [objects.item(objects.price(2900))])
    sub["discounts"] = [discount]

    assert stripe_mrr.mrr([sub], {}, NOW) is None


def test_a_yearly_amount_off_is_spread_over_twelve_months(objects: StripeObjects) -> None:
    customer = objects.customer("a@x.io")
    coupon = objects.coupon(amount_off=12_000, currency="usd", duration="forever")
    discount = objects.discount(coupon)
    discount["source"]["coupon"] = coupon
    sub = objects.subscription(customer, [objects.item(objects.price(120_000, interval="year"))])
    sub["discounts"] = [discount]

    assert stripe_mrr.mrr([sub], {}, NOW) == {"usd": 9000}


def test_an_unexpanded_discount_makes_mrr_unknown(objects: StripeObjects) -> None:
    sub = objects.subscription(objects.customer("a@x.io"), [objects.item(objects.price(2900))])
    sub["discounts"] = ["di_not_expanded"]

    assert stripe_mrr.mrr([sub], {}, NOW) is None


def test_a_free_plan_is_zero_and_known(objects: StripeObjects) -> None:
    sub = objects.subscription(objects.customer("a@x.io"), [objects.item(objects.price(0))])

    assert stripe_mrr.mrr([sub], {}, NOW) == {"usd": 0}


@pytest.mark.parametrize(
    ("statuses", "main"),
    [
        (["canceled", "active"], "active"),
        (["active", "unpaid"], "active"),
        (["incomplete_expired", "unpaid"], "unpaid"),
        (["incomplete", "canceled"], "incomplete"),
        (["canceled", "incomplete_expired"], "incomplete_expired"),
    ],
)
def test_the_main_subscription(objects: StripeObjects, statuses: list[str], main: str) -> None:
    customer = objects.customer("a@x.io")
    subs = [
        objects.subscription(customer, [objects.item(objects.price(100))], status=status)
        for status in statuses
    ]

    chosen = main_subscription(subs)

    assert chosen is not None and chosen["status"] == main


def test_a_plan_names_each_item_and_its_quantity(objects: StripeObjects) -> None:
    items = [
        objects.item(objects.price(2900, nickname="Pro yearly")),
        objects.item(objects.price(500, product="Seat"), 3),
    ]
    items[1]["price"]["product"] = {"id": "prod_x", "object": "product", "name": "Seat"}
    sub = objects.subscription(objects.customer("a@x.io"), items)

    assert plan_name(sub) == "Pro yearly + 3 x Seat"


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, "succeeded"),
        ({"refunded": True, "amount_refunded": 100}, "refunded"),
        ({"amount_refunded": 40}, "partially_refunded"),
        ({"captured": False, "amount_captured": 0}, "uncaptured"),
        ({"status": "pending"}, "pending"),
        ({"status": "failed"}, "failed"),
    ],
)
def test_charge_status(objects: StripeObjects, changes: dict[str, Any], status: str) -> None:
    charge = objects.charge(objects.customer("a@x.io"), 100) | changes

    assert charge_status(charge) == status


@pytest.mark.parametrize(
    ("coupon", "words"),
    [
        ({"percent_off": 25.5, "duration": "forever"}, "25.5% off forever"),
        ({"percent_off": 100, "duration": "once"}, "100% off once"),
        (
            {
                "amount_off": 1500,
                "currency": "eur",
                "duration": "repeating",
                "duration_in_months": 6,
            },
            "€15.00 off for 6 months",
        ),
    ],
)
def test_a_discount_in_words(objects: StripeObjects, coupon: dict[str, Any], words: str) -> None:
    made = objects.coupon(**coupon, name="Spring")
    discount = objects.discount(made)
    discount["source"]["coupon"] = made

    assert describe_discount(discount) == ("Spring", words)


@pytest.mark.parametrize(
    ("balance", "currency", "text"),
    [(-500, "jpy", "500 JPY credit"), (1234, "eur", "€12.34 owed"), (0, "usd", None)],
)
def test_balance_words(balance: int, currency: str, text: str | None) -> None:
    assert balance_text(balance, currency) == text


def test_months_per_period() -> None:
    year = {"recurring": {"interval": "year", "interval_count": 2}}

    assert stripe_mrr.months_per_period(year) == Decimal(24)
