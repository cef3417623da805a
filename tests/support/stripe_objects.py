"""Stripe objects for test scenarios, derived from Stripe's own published fixtures.

``tests/fixtures/stripe/fixtures3.json`` holds, verbatim, the objects that stripe-mock serves
(github.com/stripe/openapi, ``openapi/fixtures3.json``, the commit named in the file). Every
builder here starts from a deep copy of one of them, gives it a fresh id and sets only what
the scenario is about, keeping the other fields as Stripe shapes them. The fixtures' few
self-contradicting values (an uncaptured charge marked ``succeeded`` and ``paid``, a
subscription both active and canceled) are made consistent, as Stripe's API would return.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from tests.support.fake_stripe import JSON, FakeStripe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stripe" / "fixtures3.json"
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
DAY = 86_400
MONTH = 30 * DAY


@functools.cache
def _resources() -> dict[str, JSON]:
    resources: dict[str, JSON] = json.loads(FIXTURES.read_text(encoding="utf-8"))["resources"]
    return resources


def fixture(kind: str) -> JSON:
    """A deep copy of Stripe's fixture object of ``kind`` (``customer``, ``charge``...)."""
    return copy.deepcopy(_resources()[kind])


def _id(value: JSON | str) -> str:
    return value if isinstance(value, str) else str(value["id"])


class StripeObjects:
    """Builds scenario objects from the fixtures and stores them in a fake Stripe account."""

    def __init__(self, fake: FakeStripe) -> None:
        self.fake = fake
        self._clock = T0

    def _next_created(self) -> int:
        self._clock += 60
        return self._clock

    def _from(self, kind: str, prefix: str, fields: dict[str, Any]) -> JSON:
        obj = fixture(kind)
        obj["id"] = self.fake.new_id(prefix)
        if "created" in obj:
            obj["created"] = self._next_created()
        obj.update(fields)
        return obj

    # --- customers and how they pay -------------------------------------------------------

    def customer(self, email: str | None, **fields: Any) -> JSON:
        """A customer with ``email`` (as stored: Stripe keeps the capitals it was given)."""
        base = {"email": email, "discount": None, "livemode": False}
        return self.fake.add(self._from("customer", "cus", base | fields))

    def payment_method(
        self,
        customer: JSON,
        *,
        brand: str = "visa",
        last4: str = "4242",
        exp_month: int = 8,
        exp_year: int = 2030,
        default: bool = True,
    ) -> JSON:
        """A card PaymentMethod of ``customer``, by default its invoices' default."""
        method = self._from("payment_method", "pm", {"customer": customer["id"]})
        method["card"] |= {
            "brand": brand,
            "display_brand": brand,
            "last4": last4,
            "exp_month": exp_month,
            "exp_year": exp_year,
        }
        self.fake.add(method)
        if default:
            customer["invoice_settings"]["default_payment_method"] = method["id"]
        return method

    def card(self, customer: JSON, *, brand: str = "Visa", last4: str = "4242") -> JSON:
        """A legacy Card source, made the customer's ``default_source``."""
        card = self.fake.add(self._from("card", "card", {"customer": customer["id"]}))
        card |= {"brand": brand, "last4": last4}
        customer["default_source"] = card["id"]
        return card

    # --- catalog --------------------------------------------------------------------------

    def product(self, name: str) -> JSON:
        """A product; prices refer to it by id, as Stripe does."""
        return self.fake.add(self._from("product", "prod", {"name": name, "default_price": None}))

    def price(
        self,
        unit_amount: int | None = 2000,
        *,
        product: str = "Pro",
        currency: str = "usd",
        interval: str = "month",
        interval_count: int = 1,
        usage_type: str = "licensed",
        nickname: str | None = None,
        tiers: list[JSON] | None = None,
        tiers_mode: str | None = None,
        transform_quantity: JSON | None = None,
    ) -> JSON:
        """A recurring price; ``tiers`` makes it tiered (Stripe lists tiers only on request)."""
        found = next((p for p in self.fake.products.values() if p["name"] == product), None)
        product_id = (found or self.product(product))["id"]
        price = self._from(
            "price",
            "price",
            {
                "product": product_id,
                "currency": currency,
                "nickname": nickname,
                "unit_amount": unit_amount,
                "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
                "billing_scheme": "tiered" if tiers else "per_unit",
                "tiers_mode": tiers_mode,
                "transform_quantity": transform_quantity,
            },
        )
        price["recurring"] |= {
            "interval": interval,
            "interval_count": interval_count,
            "usage_type": usage_type,
        }
        if tiers:
            price["tiers"] = tiers
        return price

    def item(
        self,
        price: JSON,
        quantity: int | None = 1,
        *,
        period_end: int = T0 + MONTH,
        discounts: list[JSON] | None = None,
    ) -> JSON:
        """A subscription item (``quantity`` None for a metered price, as Stripe sends)."""
        item = self._from(
            "subscription_item",
            "si",
            {
                "price": price,
                "quantity": quantity,
                "current_period_start": period_end - MONTH,
                "current_period_end": period_end,
                "discounts": [d["id"] for d in discounts or []],
            },
        )
        # The legacy ``plan`` mirrors the price, as Stripe fills it in.
        item["plan"] |= {
            "id": price["id"],
            "amount": price["unit_amount"],
            "amount_decimal": price["unit_amount_decimal"],
            "billing_scheme": price["billing_scheme"],
            "currency": price["currency"],
            "interval": price["recurring"]["interval"],
            "interval_count": price["recurring"]["interval_count"],
            "usage_type": price["recurring"]["usage_type"],
            "nickname": price["nickname"],
            "product": price["product"],
            "tiers_mode": price["tiers_mode"],
            "transform_usage": None,
            "livemode": False,
            "created": price["created"],
        }
        return item

    def subscription(self, customer: JSON | str, items: list[JSON], **fields: Any) -> JSON:
        """A subscription of ``customer``: active, no end, no trial, unless ``fields`` say."""
        sub = self._from(
            "subscription",
            "sub",
            {
                "customer": _id(customer),
                "currency": items[0]["price"]["currency"] if items else "usd",
                "status": "active",
                "cancel_at": None,
                "cancel_at_period_end": False,
                "canceled_at": None,
                "ended_at": None,
                "trial_start": None,
                "trial_end": None,
                "pause_collection": None,
                "pending_update": None,
                "discounts": [],
                "transfer_data": None,
            },
        )
        sub["items"] |= {"data": items, "url": f"/v1/subscription_items?subscription={sub['id']}"}
        for item in items:
            item["subscription"] = sub["id"]
        if "discounts" in fields:
            fields["discounts"] = [d["id"] for d in fields["discounts"]]
        sub.update(fields)
        return self.fake.add(sub)

    def coupon(
        self,
        *,
        percent_off: float | None = None,
        amount_off: int | None = None,
        currency: str | None = None,
        duration: str = "forever",
        duration_in_months: int | None = None,
        name: str | None = None,
    ) -> JSON:
        """A coupon: ``percent_off`` or ``amount_off`` (in ``currency``)."""
        return self.fake.add(
            self._from(
                "coupon",
                "co",
                {
                    "percent_off": percent_off,
                    "amount_off": amount_off,
                    "currency": currency,
                    "duration": duration,
                    "duration_in_months": duration_in_months,
                    "name": name,
                },
            )
        )

    def discount(
        self, coupon: JSON, *, customer: JSON | None = None, start: int = T0, end: int | None = None
    ) -> JSON:
        """A discount applying ``coupon`` (the 2025-09-30 shape: ``source.coupon``)."""
        discount = self._from(
            "discount",
            "di",
            {
                "coupon": None,
                "customer": customer["id"] if customer else None,
                "start": start,
                "end": end,
                "source": {"coupon": coupon["id"], "type": "coupon"},
            },
        )
        del discount["coupon"]
        return self.fake.add(discount)

    # --- money moving ---------------------------------------------------------------------

    def charge(
        self,
        customer: JSON,
        amount: int,
        *,
        currency: str = "usd",
        status: str = "succeeded",
        captured: bool = True,
        refunded: int = 0,
        failure_message: str | None = None,
        created: int | None = None,
    ) -> JSON:
        """A charge; ``refunded`` minor units come with their refund objects."""
        succeeded = status == "succeeded"
        charge = self._from(
            "charge",
            "ch",
            {
                "customer": customer["id"],
                "amount": amount,
                "currency": currency,
                "status": status,
                "paid": succeeded,
                "captured": succeeded and captured,
                "amount_captured": amount if succeeded and captured else 0,
                "amount_refunded": refunded,
                "refunded": refunded >= amount > 0,
                "failure_message": failure_message,
                "failure_code": "card_declined" if failure_message else None,
            },
        )
        if created is not None:
            charge["created"] = created
        if refunded:
            refund = self._from("refund", "re", {"amount": refunded, "charge": charge["id"]})
            refund |= {"currency": currency, "customer": customer["id"]}
            charge["refunds"] |= {"data": [refund], "url": f"/v1/charges/{charge['id']}/refunds"}
        return self.fake.add(charge)

    def dispute(
        self, charge: JSON, *, status: str = "needs_response", reason: str = "fraudulent"
    ) -> JSON:
        """A dispute of the whole ``charge``, which Stripe then marks ``disputed``."""
        charge["disputed"] = True
        dispute = self._from(
            "dispute",
            "dp",
            {
                "charge": charge["id"],
                "amount": charge["amount"],
                "currency": charge["currency"],
                "status": status,
                "reason": reason,
            },
        )
        dispute["evidence_details"]["due_by"] = dispute["created"] + 7 * DAY
        return self.fake.add(dispute)

    def invoice(
        self,
        customer: JSON,
        amount_due: int,
        *,
        currency: str = "usd",
        status: str = "open",
        due_date: int | None = None,
        attempt_count: int = 0,
        next_payment_attempt: int | None = None,
    ) -> JSON:
        """An invoice; ``due_date`` makes it ``send_invoice``, else charged automatically."""
        invoice = self._from(
            "invoice",
            "in",
            {
                "customer": customer["id"],
                "currency": currency,
                "status": status,
                "amount_due": amount_due,
                "amount_paid": 0,
                "amount_remaining": amount_due,
                "total": amount_due,
                "subtotal": amount_due,
                "due_date": due_date,
                "collection_method": "send_invoice" if due_date else "charge_automatically",
                "attempted": attempt_count > 0,
                "attempt_count": attempt_count,
                "next_payment_attempt": next_payment_attempt,
            },
        )
        invoice["hosted_invoice_url"] = f"https://invoice.stripe.com/i/acct_test/{invoice['id']}"
        return self.fake.add(invoice)
