"""The stripe connector's fields, as pure functions of Stripe objects (no I/O).

Each function reads objects shaped as Stripe's API returns them (any version since
2020-08-27: a ``current_period_end`` on the subscription or on its items, a discount's
coupon in ``coupon`` or in ``source.coupon``) and says what an agent should read. The
README's Stripe field table states each rule; MRR lives in ``stripe_mrr``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from aggregator.merge import money
from connectors import stripe_mrr
from connectors.stripe_mrr import coupon_of, in_effect

JSON = dict[str, Any]
DAY = 86_400
LIVE = frozenset({"active", "trialing", "past_due"})
# Which subscription an agent asks about first: live, then stalled, then started, then over.
_RANK = {"active": 0, "trialing": 0, "past_due": 0, "unpaid": 1, "paused": 1, "incomplete": 2}
ENDED = frozenset({"canceled", "incomplete_expired"})
OPEN_DISPUTE = frozenset(
    {"warning_needs_response", "warning_under_review", "needs_response", "under_review"}
)


FIELDS: tuple[str, ...] = (
    *("id", "customer_ids", "customers_count", "created_at", "currency", "balance"),
    *("balance_text", "delinquent", "dashboard_url"),
    *("subscriptions_count", "subscription_status", "subscription_id", "plan", "mrr"),
    *("mrr_excludes_metered", "current_period_end", "renews_at", "ends_at", "cancel_at"),
    *("cancel_at_period_end", "canceled_at", "ended_at", "trial_end", "trial_days_left"),
    *("collection_paused", "pause_collection_behavior", "pause_collection_resumes_at"),
    *("coupon", "discount", "discount_ends_at"),
    *("payment_method_type", "payment_method_brand", "payment_method_last4"),
    *("payment_method_expires", "payment_method_expired"),
    *("charges_count", "charges_truncated", "last_charge_amount", "last_charge_at"),
    *("last_charge_status", "last_charge_amount_refunded", "first_charge_at"),
    *("lifetime_value", "total_refunded"),
    *("last_failed_payment_at", "last_failed_payment_amount", "last_failed_payment_message"),
    *("disputes_count", "open_dispute_status", "open_dispute_reason", "open_dispute_amount"),
    *("open_dispute_evidence_due_by", "open_invoices_count", "open_invoices_amount_due"),
    *("past_due_invoices_count", "oldest_open_invoice_url", "next_payment_attempt"),
)
"""Every field of a profile (``summarize`` and the dashboard link), in the README table's
order, without the prefix; a test keeps the three in step."""


def iso(timestamp: Any) -> str | None:
    """A Unix timestamp as ISO 8601 UTC, or None."""
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        return None
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def newest_first(objects: Iterable[JSON]) -> list[JSON]:
    """Objects by ``created``, newest first (ties keep Stripe's order)."""
    return sorted(objects, key=lambda o: o.get("created") or 0, reverse=True)


def id_of(value: Any) -> str | None:
    """The id of an expandable field, expanded or not."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value) if value else None


def amounts(by_currency: Mapping[str, int], main: str | None) -> str | None:
    """Money per currency as one string, the main currency first: ``"$5.00 + €3.00"``."""
    main = (main or "").lower()
    if not by_currency:
        return money(0, main) if main else None
    codes = sorted(by_currency, key=lambda code: (code != main, code))
    return " + ".join(money(by_currency[code], code) for code in codes)


def _add(totals: dict[str, int], currency: Any, amount: Any) -> None:
    if isinstance(amount, int) and not isinstance(amount, bool) and currency:
        code = str(currency).lower()
        totals[code] = totals.get(code, 0) + amount


# --- customers ------------------------------------------------------------------------------


def main_subscription(subscriptions: Sequence[JSON]) -> JSON | None:
    """The subscription an agent means: live (active, trialing, past_due) first, then
    unpaid or paused, then incomplete, then ended; the newest within each."""
    ranked = sorted(newest_first(subscriptions), key=lambda s: _RANK.get(str(s.get("status")), 3))
    return ranked[0] if ranked else None


def main_customer(customers: Sequence[JSON], main_sub: JSON | None) -> JSON:
    """The customer of the main subscription, else the newest customer."""
    wanted = id_of(main_sub.get("customer")) if main_sub else None
    ordered = newest_first(customers)
    return next((c for c in ordered if c.get("id") == wanted), ordered[0])


def balance_text(balance: Any, currency: str | None) -> str | None:
    """Stripe's sign convention in words: negative is a credit, positive is owed."""
    if not isinstance(balance, int) or not balance or not currency:
        return None
    if balance < 0:
        return f"{money(-balance, currency)} credit"
    return f"{money(balance, currency)} owed"


def customer_fields(main: JSON, customers: Sequence[JSON], currency: str | None) -> JSON:
    """Who the customer is in Stripe: the main record and how many records share the email."""
    others = [c["id"] for c in newest_first(customers) if c.get("id") != main.get("id")]
    balance = main.get("balance")
    return {
        "id": main.get("id"),
        "customer_ids": [main.get("id"), *others],
        "customers_count": len(customers),
        "created_at": iso(main.get("created")),
        "currency": currency,
        "balance": money(balance, currency) if isinstance(balance, int) and currency else None,
        "balance_text": balance_text(balance, currency),
        "delinquent": any(bool(c.get("delinquent")) for c in customers),
    }


# --- subscriptions --------------------------------------------------------------------------


def _items(subscription: Mapping[str, Any]) -> list[JSON]:
    items: list[JSON] = (subscription.get("items") or {}).get("data") or []
    return items


def item_name(item: Mapping[str, Any]) -> str | None:
    """Price nickname, else product name, else the product's id."""
    price = item.get("price") or {}
    if price.get("nickname"):
        return str(price["nickname"])
    product = price.get("product")
    if isinstance(product, Mapping) and product.get("name"):
        return str(product["name"])
    return id_of(product) or id_of(price)


def plan_name(subscription: Mapping[str, Any]) -> str | None:
    """Every item named, with its quantity when more than one: ``"Pro + 3 x Extra seat"``."""
    names = []
    for item in _items(subscription):
        name = item_name(item)
        if name is None:
            continue
        quantity = item.get("quantity")
        many = isinstance(quantity, int) and quantity > 1 and not stripe_mrr.is_metered(item)
        names.append(f"{quantity} x {name}" if many else name)
    if (subscription.get("items") or {}).get("has_more"):
        names.append("more")
    return " + ".join(names) or None


def period_end(subscription: Mapping[str, Any]) -> int | None:
    """``current_period_end`` (on the subscription before 2025-03-31, on each item since)."""
    if isinstance(subscription.get("current_period_end"), int):
        return int(subscription["current_period_end"])
    ends = [i["current_period_end"] for i in _items(subscription) if i.get("current_period_end")]
    return min(ends) if ends else None


def _ends_at(subscription: Mapping[str, Any]) -> int | None:
    if subscription.get("status") in ENDED:
        return None
    if isinstance(subscription.get("cancel_at"), int):
        return int(subscription["cancel_at"])
    if subscription.get("cancel_at_period_end"):
        return period_end(subscription)
    return None


def renewal_fields(main: Mapping[str, Any], now: float) -> JSON:
    """When the main subscription renews or ends, its trial and paused collection."""
    status = main.get("status")
    end = period_end(main)
    ends_at = _ends_at(main)
    renews = status in LIVE and end is not None and (ends_at is None or ends_at > end)
    trial_end = main.get("trial_end")
    days_left = None
    if status == "trialing" and isinstance(trial_end, int):
        days_left = max(0, math.ceil((trial_end - now) / DAY))
    pause = main.get("pause_collection") or {}
    return {
        "current_period_end": iso(end),
        "renews_at": iso(end) if renews else None,
        "ends_at": iso(ends_at),
        "cancel_at": iso(main.get("cancel_at")),
        "cancel_at_period_end": bool(main.get("cancel_at_period_end")),
        "canceled_at": iso(main.get("canceled_at")),
        "ended_at": iso(main.get("ended_at")),
        "trial_end": iso(trial_end),
        "trial_days_left": days_left,
        "collection_paused": bool(pause),
        "pause_collection_behavior": pause.get("behavior") if pause else None,
        "pause_collection_resumes_at": iso(pause.get("resumes_at")) if pause else None,
    }


def describe_discount(discount: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(coupon name, words) of one discount: ``("Launch", "25.5% off for 3 months")``."""
    coupon = coupon_of(discount)
    if not isinstance(coupon, Mapping):
        return (coupon if isinstance(coupon, str) else None), None
    percent, off = coupon.get("percent_off"), coupon.get("amount_off")
    if percent is not None:
        words = f"{Decimal(str(percent)).normalize():f}% off"
    elif isinstance(off, int) and coupon.get("currency"):
        words = f"{money(off, str(coupon['currency']))} off"
    else:
        words = "discount"
    duration = coupon.get("duration")
    if duration == "repeating" and coupon.get("duration_in_months"):
        words += f" for {coupon['duration_in_months']} months"
    elif duration in ("forever", "once"):
        words += f" {duration}"
    return str(coupon.get("name") or coupon.get("id") or "") or None, words


def discount_fields(
    main: Mapping[str, Any] | None, customer: Mapping[str, Any], now: float
) -> JSON:
    """The discounts in effect on the main subscription (its items', its own, else the
    customer's), in words."""
    found: list[Mapping[str, Any]] = []
    if main is not None:
        for item in _items(main):
            found += [d for d in item.get("discounts") or [] if isinstance(d, Mapping)]
        own = [d for d in main.get("discounts") or [] if isinstance(d, Mapping)]
        if not own and isinstance(main.get("discount"), Mapping):
            own = [main["discount"]]
        found += own
    if not found and isinstance(customer.get("discount"), Mapping):
        found = [customer["discount"]]
    current = [d for d in found if in_effect(d, now)]
    described = [describe_discount(d) for d in current]
    ends = [d["end"] for d in current if isinstance(d.get("end"), int)]
    return {
        "coupon": ", ".join(name for name, _ in described if name) or None,
        "discount": ", ".join(words for _, words in described if words) or None,
        "discount_ends_at": iso(min(ends)) if ends else None,
    }


def subscription_fields(
    subscriptions: Sequence[JSON],
    main: JSON | None,
    customers: Sequence[JSON],
    currency: str | None,
    now: float,
) -> JSON:
    """The main subscription in detail, and MRR over every subscription of every customer."""
    discounts = {
        str(c["id"]): c["discount"] for c in customers if isinstance(c.get("discount"), Mapping)
    }
    totals = stripe_mrr.mrr(subscriptions, discounts, now)
    fields: JSON = {
        "subscriptions_count": len(subscriptions),
        "subscription_status": main.get("status") if main else None,
        "subscription_id": main.get("id") if main else None,
        "plan": plan_name(main) if main else None,
        "mrr": amounts(totals, currency) if totals is not None else None,
        "mrr_excludes_metered": stripe_mrr.excludes_metered(subscriptions),
    }
    if main is None:
        return fields | {key: None for key in renewal_fields({}, now)}
    return fields | renewal_fields(main, now)


# --- payment method -------------------------------------------------------------------------


def _card_like(method: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """(type, details) of a PaymentMethod, a Card or a Source."""
    if method.get("object") == "card":
        return "card", method
    kind = str(method.get("type") or "")
    details = method.get(kind)
    return kind, details if isinstance(details, Mapping) else {}


def payment_method_fields(
    main_sub: Mapping[str, Any] | None, customer: Mapping[str, Any], now: float
) -> JSON:
    """The method Stripe charges next: the subscription's default, else the customer's
    ``invoice_settings.default_payment_method``, else the customer's default source."""
    candidates = []
    if main_sub is not None:
        candidates += [main_sub.get("default_payment_method"), main_sub.get("default_source")]
    settings = customer.get("invoice_settings") or {}
    candidates += [settings.get("default_payment_method"), customer.get("default_source")]
    method = next((c for c in candidates if isinstance(c, Mapping)), None)
    if method is None:
        return {
            "payment_method_type": None,
            "payment_method_brand": None,
            "payment_method_last4": None,
            "payment_method_expires": None,
            "payment_method_expired": None,
        }
    kind, details = _card_like(method)
    brand = details.get("display_brand") or details.get("brand") or details.get("bank_name")
    month, year = details.get("exp_month"), details.get("exp_year")
    expires = expired = None
    if isinstance(month, int) and isinstance(year, int):
        expires = f"{month:02d}/{year}"
        today = dt.datetime.fromtimestamp(now, tz=dt.UTC)
        expired = (year, month) < (today.year, today.month)
    return {
        "payment_method_type": kind or None,
        "payment_method_brand": str(brand).lower() if brand else None,
        "payment_method_last4": details.get("last4"),
        "payment_method_expires": expires,
        "payment_method_expired": expired,
    }


# --- charges, disputes, invoices ------------------------------------------------------------


def charge_status(charge: Mapping[str, Any]) -> str | None:
    """Stripe's status, told apart as the dashboard does: a succeeded charge is
    ``refunded``, ``partially_refunded`` or ``uncaptured`` when it is."""
    status = charge.get("status")
    if status != "succeeded":
        return str(status) if status else None
    if charge.get("refunded"):
        return "refunded"
    if (charge.get("amount_refunded") or 0) > 0:
        return "partially_refunded"
    if charge.get("captured") is False:
        return "uncaptured"
    return "succeeded"


def _net(charge: Mapping[str, Any]) -> int:
    captured = charge.get("amount_captured")
    if not isinstance(captured, int):
        captured = (charge.get("amount") or 0) if charge.get("captured") is not False else 0
    return int(captured) - int(charge.get("amount_refunded") or 0)


def charge_fields(charges: Sequence[JSON], currency: str | None, truncated: bool) -> JSON:
    """The newest charge, the oldest read, the last failure, lifetime value and refunds."""
    charges = newest_first(charges)
    lifetime: dict[str, int] = {}
    refunded: dict[str, int] = {}
    for charge in charges:
        if charge.get("status") == "succeeded":
            _add(lifetime, charge.get("currency"), _net(charge))
        if charge.get("amount_refunded"):
            _add(refunded, charge.get("currency"), charge.get("amount_refunded"))
    last = charges[0] if charges else {}
    failed = next((c for c in charges if c.get("status") == "failed"), {})
    last_currency = str(last.get("currency") or currency or "")

    def amount(charge: Mapping[str, Any], name: str) -> str | None:
        value = charge.get(name)
        code = charge.get("currency")
        return money(value, str(code)) if isinstance(value, int) and code else None

    refunded_last = last.get("amount_refunded")

    return {
        "charges_count": len(charges),
        "charges_truncated": truncated,
        "last_charge_amount": amount(last, "amount"),
        "last_charge_amount_refunded": amount(last, "amount_refunded") if refunded_last else None,
        "last_charge_at": iso(last.get("created")),
        "last_charge_status": charge_status(last) if last else None,
        "first_charge_at": iso(charges[-1].get("created")) if charges else None,
        "lifetime_value": amounts(lifetime, currency or last_currency or None),
        "total_refunded": amounts(refunded, currency) if any(refunded.values()) else None,
        "last_failed_payment_at": iso(failed.get("created")),
        "last_failed_payment_amount": amount(failed, "amount"),
        "last_failed_payment_message": failed.get("failure_message"),
    }


def dispute_fields(charges: Sequence[JSON], disputes: Sequence[JSON]) -> JSON:
    """How many charges were disputed, and the newest dispute still open."""
    open_ = next((d for d in newest_first(disputes) if d.get("status") in OPEN_DISPUTE), {})
    due = (open_.get("evidence_details") or {}).get("due_by")
    value, code = open_.get("amount"), open_.get("currency")
    return {
        "disputes_count": sum(1 for c in charges if c.get("disputed")),
        "open_dispute_status": open_.get("status"),
        "open_dispute_reason": open_.get("reason"),
        "open_dispute_amount": money(value, str(code)) if isinstance(value, int) and code else None,
        "open_dispute_evidence_due_by": iso(due),
    }


def is_past_due(invoice: Mapping[str, Any], now: float) -> bool:
    """An open invoice past its due date, or one whose automatic payment already failed."""
    due = invoice.get("due_date")
    if isinstance(due, int) and due < now:
        return True
    automatic = invoice.get("collection_method") == "charge_automatically"
    return automatic and bool(invoice.get("attempted")) and (invoice.get("attempt_count") or 0) > 0


def invoice_fields(invoices: Sequence[JSON], currency: str | None, now: float) -> JSON:
    """Open invoices: how many, what is still due, and the oldest one's link and next try."""
    open_ = [i for i in invoices if i.get("status") == "open"]
    due: dict[str, int] = {}
    for invoice in open_:
        remaining = invoice.get("amount_remaining")
        _add(due, invoice.get("currency"), remaining if remaining is not None else 0)
    oldest = newest_first(open_)[-1] if open_ else {}
    return {
        "open_invoices_count": len(open_),
        "open_invoices_amount_due": amounts(due, currency) if open_ else None,
        "past_due_invoices_count": sum(1 for i in open_ if is_past_due(i, now)),
        "oldest_open_invoice_url": oldest.get("hosted_invoice_url"),
        "next_payment_attempt": iso(oldest.get("next_payment_attempt")),
    }


def summarize(
    customers: Sequence[JSON],
    subscriptions: Sequence[JSON],
    charges: Sequence[JSON],
    invoices: Sequence[JSON],
    disputes: Sequence[JSON],
    *,
    charges_truncated: bool,
    now: float,
) -> JSON:
    """Every field of the profile from the objects of all customers sharing the email."""
    main_sub = main_subscription(subscriptions)
    main = main_customer(customers, main_sub)
    newest_charge = newest_first(charges)[0] if charges else {}
    currency = main.get("currency") or (main_sub or {}).get("currency")
    currency = currency or newest_charge.get("currency")
    currency = str(currency).lower() if currency else None
    return {
        **customer_fields(main, customers, currency),
        **subscription_fields(subscriptions, main_sub, customers, currency, now),
        **discount_fields(main_sub, main, now),
        **payment_method_fields(main_sub, main, now),
        **charge_fields(charges, currency, charges_truncated),
        **dispute_fields(charges, disputes),
        **invoice_fields(invoices, currency, now),
    }
