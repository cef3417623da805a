"""The packaged Groove template's Billing block, rendered from real answers of the proxy.

What an agent reads must be what Stripe says: a failing Stripe is never shown as "Not a
Stripe customer", a scheduled end is shown as an end, not a renewal.
"""

from __future__ import annotations

import re
from typing import Any

from aggregator.groove import render_sidebar
from aggregator.preview import sample_template
from tests.support.fake_stripe import ScriptedStripe
from tests.support.proxy import running_proxy, settings_from
from tests.support.stripe_objects import DAY, MONTH, T0, StripeObjects

EMAIL = "ada@example.com"


async def sidebar(fake: ScriptedStripe, email: str = EMAIL) -> tuple[dict[str, Any], str]:
    stripe = {
        "type": "stripe",
        "api_key": fake.key,
        "api_base": fake.url,
        "retries": 0,
        "circuit_failures": 0,
    }
    async with running_proxy(settings_from({"stripe": stripe})) as proxy:
        status, body = await proxy.profile(email)
    assert status == 200
    text = re.sub(
        r"\s+", " ", re.sub(r"<[^>]+>", " ", render_sidebar(sample_template(), body, email))
    )
    return body, text


async def test_a_paying_customer_in_the_sidebar(fake_stripe: ScriptedStripe) -> None:
    objects = StripeObjects(fake_stripe)
    ada = objects.customer(EMAIL, balance=-2500)
    objects.payment_method(ada, brand="visa", last4="4242", exp_month=8, exp_year=2030)
    price = objects.price(9800, nickname="Business")
    objects.subscription(ada, [objects.item(price, period_end=T0 + MONTH)], cancel_at=T0 + MONTH)
    charge = objects.charge(ada, 9800, refunded=9800)
    objects.dispute(charge, status="needs_response", reason="product_not_received")
    objects.invoice(ada, 9800, due_date=T0 + DAY)

    body, text = await sidebar(fake_stripe)

    assert body["stripe_ends_at"] == "2023-12-14T22:13:20Z"
    assert "Business ● active" in text
    assert "$98.00/mo" in text
    assert "Ends Dec 14, 2023" in text and "Renews" not in text
    assert "Visa •••• 4242 exp 08/2030" in text
    assert "$98.00 in 1 open invoice, 1 past due" in text
    assert "$25.00 credit" in text
    assert "(refunded: $98.00)" in text
    assert "$98.00 needs response (product not received)" in text
    assert "Not a Stripe customer" not in text


async def test_a_failing_stripe_is_not_shown_as_no_customer(fake_stripe: ScriptedStripe) -> None:
    fake_stripe.fail_500(times=None)

    body, text = await sidebar(fake_stripe)

    assert body["stripe_error"] == "error"
    assert "Stripe did not answer (error): billing unknown" in text
    assert "Not a Stripe customer" not in text


async def test_an_unknown_email_is_not_a_stripe_customer(fake_stripe: ScriptedStripe) -> None:
    body, text = await sidebar(fake_stripe, "nobody@example.com")

    assert "stripe_error" not in body
    assert "Not a Stripe customer." in text
    assert "did not answer" not in text
