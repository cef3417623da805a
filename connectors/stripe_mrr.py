"""Monthly recurring revenue as Stripe Billing defines it, from subscription objects.

Stripe's metric definitions (https://docs.stripe.com/billing/subscriptions/analytics/glossary):
MRR is the sum of the monthly-normalized value of all ``active`` and ``past_due``
subscriptions; it excludes trials, taxes, free plans and metered (usage-based) prices.
Discounts follow Stripe Billing's "subtract recurring discounts" setting
(https://support.stripe.com/questions/impact-of-discounts-and-coupons-on-monthly-recurring-revenue-mrr-in-billing):
a ``forever`` coupon always, a ``repeating`` one while it is in effect; a ``once`` coupon
does not change MRR. Amounts stay exact (``Decimal`` minor units) until the final rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

MRR_STATUSES = frozenset({"active", "past_due"})
_MONTHS: dict[str, Decimal] = {
    "day": Decimal(12) / Decimal("365.25"),
    "week": Decimal(12) / Decimal(52),
    "month": Decimal(1),
    "year": Decimal(12),
}


class Unknown(Exception):
    """An amount that cannot be known from what Stripe returned (never guess it)."""


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except ArithmeticError:
        return None
    return number if number.is_finite() else None


def _amount(obj: Mapping[str, Any], name: str) -> Decimal | None:
    """``<name>_decimal`` (exact, may hold fractions of a minor unit), else ``<name>``."""
    exact = _decimal(obj.get(f"{name}_decimal"))
    return exact if exact is not None else _decimal(obj.get(name))


def is_metered(item: Mapping[str, Any]) -> bool:
    """True for a usage-based price (Stripe leaves those out of MRR)."""
    recurring = (item.get("price") or {}).get("recurring") or {}
    return recurring.get("usage_type") == "metered" or bool(recurring.get("meter"))


def months_per_period(price: Mapping[str, Any]) -> Decimal:
    """How many months one billing period of ``price`` lasts."""
    recurring = price.get("recurring") or {}
    months = _MONTHS.get(str(recurring.get("interval")))
    count = _decimal(recurring.get("interval_count")) or Decimal(1)
    if months is None or count <= 0:
        raise Unknown("no recurring interval")
    return months * count


def _quantity(item: Mapping[str, Any], price: Mapping[str, Any]) -> Decimal:
    quantity = _decimal(item.get("quantity"))
    if quantity is None:
        raise Unknown("no quantity")
    transform = price.get("transform_quantity") or {}
    divide_by = _decimal(transform.get("divide_by"))
    if divide_by is not None and divide_by > 0:
        rounding = ROUND_CEILING if transform.get("round") == "up" else ROUND_FLOOR
        quantity = (quantity / divide_by).to_integral_value(rounding)
    return quantity


def _tiered(price: Mapping[str, Any], quantity: Decimal) -> Decimal:
    tiers = price.get("tiers")
    if not isinstance(tiers, list) or not tiers:
        raise Unknown("tiers not available")
    if price.get("tiers_mode") == "volume":
        for tier in tiers:
            upper = _decimal(tier.get("up_to"))
            if upper is None or quantity <= upper:
                unit = _amount(tier, "unit_amount") or Decimal(0)
                return unit * quantity + (_amount(tier, "flat_amount") or Decimal(0))
        raise Unknown("quantity beyond the last tier")
    total, lower = Decimal(0), Decimal(0)
    for tier in tiers:
        upper = _decimal(tier.get("up_to"))
        units = (quantity if upper is None else min(quantity, upper)) - lower
        if units <= 0:
            break
        unit = _amount(tier, "unit_amount") or Decimal(0)
        total += unit * units + (_amount(tier, "flat_amount") or Decimal(0))
        if upper is None:
            break
        lower = upper
    return total


def period_amount(item: Mapping[str, Any]) -> Decimal:
    """What one licensed subscription item costs per billing period, in minor units."""
    price = item.get("price") or {}
    quantity = _quantity(item, price)
    if price.get("billing_scheme") == "tiered":
        return _tiered(price, quantity)
    unit = _amount(price, "unit_amount")
    if unit is None:
        raise Unknown("no unit amount")
    return unit * quantity


def coupon_of(discount: Mapping[str, Any]) -> Mapping[str, Any] | str | None:
    """The coupon of a discount: ``source.coupon`` (2025-09-30 and later) or ``coupon``."""
    coupon = (discount.get("source") or {}).get("coupon") or discount.get("coupon")
    return coupon if isinstance(coupon, Mapping | str) else None


def in_effect(discount: Mapping[str, Any], now: float) -> bool:
    """True when ``now`` lies between the discount's ``start`` and ``end``."""
    start, end = discount.get("start"), discount.get("end")
    return (start is None or start <= now) and (end is None or now < end)


def _recurring(discounts: Iterable[Any], now: float) -> list[Mapping[str, Any]]:
    """Coupons of the discounts that lower MRR now; Unknown when a coupon is not readable."""
    coupons = []
    for discount in discounts:
        if isinstance(discount, str):
            raise Unknown("discount not expanded")
        if not isinstance(discount, Mapping) or not in_effect(discount, now):
            continue
        coupon = coupon_of(discount)
        if not isinstance(coupon, Mapping):
            raise Unknown("coupon not available")
        if coupon.get("duration") in ("forever", "repeating"):
            coupons.append(coupon)
    return coupons


def _discounted(
    amount: Decimal, coupons: list[Mapping[str, Any]], currency: str, months: Decimal
) -> Decimal:
    for coupon in coupons:
        percent = _decimal(coupon.get("percent_off"))
        if percent is not None:
            amount = amount * (Decimal(100) - percent) / Decimal(100)
            continue
        off = _decimal(coupon.get("amount_off"))
        if off is None:
            raise Unknown("coupon without amount")
        if str(coupon.get("currency") or "").lower() != currency:
            options = coupon.get("currency_options") or {}
            off = _decimal((options.get(currency) or {}).get("amount_off"))
            if off is None:
                raise Unknown("coupon in another currency")
        amount = max(Decimal(0), amount - off / months)
    return amount


def subscription_mrr(
    subscription: Mapping[str, Any], customer_discount: Mapping[str, Any] | None, now: float
) -> tuple[str, Decimal]:
    """(currency, monthly minor units) of one subscription; Unknown when it cannot be told."""
    currency = str(subscription.get("currency") or "").lower()
    items = (subscription.get("items") or {}).get("data") or []
    if (subscription.get("items") or {}).get("has_more"):
        raise Unknown("more items than listed")
    total = Decimal(0)
    first_months: Decimal | None = None
    for item in items:
        if is_metered(item):
            continue
        price = item.get("price") or {}
        months = months_per_period(price)
        first_months = first_months or months
        item_currency = str(price.get("currency") or currency).lower()
        if currency and item_currency != currency:
            raise Unknown("items in several currencies")
        currency = currency or item_currency
        item_coupons = _recurring(item.get("discounts") or [], now)
        total += _discounted(period_amount(item), item_coupons, currency, Decimal(1)) / months
    own = list(subscription.get("discounts") or [])
    if not own and isinstance(subscription.get("discount"), Mapping):
        own = [subscription["discount"]]  # before 2025-03-31 a subscription had one discount
    if not own and customer_discount is not None:
        own = [customer_discount]
    coupons = _recurring(own, now)
    if coupons and total:
        total = _discounted(total, coupons, currency, first_months or Decimal(1))
    return currency, total


def mrr(
    subscriptions: Iterable[Mapping[str, Any]],
    customer_discounts: Mapping[str, Mapping[str, Any]],
    now: float,
) -> dict[str, int] | None:
    """Minor units per currency over the subscriptions Stripe counts; None when unknowable."""
    totals: dict[str, Decimal] = {}
    try:
        for subscription in subscriptions:
            if subscription.get("status") not in MRR_STATUSES:
                continue
            customer = subscription.get("customer")
            customer_id = customer.get("id") if isinstance(customer, Mapping) else customer
            discount = customer_discounts.get(str(customer_id))
            currency, amount = subscription_mrr(subscription, discount, now)
            totals[currency] = totals.get(currency, Decimal(0)) + amount
    except Unknown:
        return None
    return {code: int(total.quantize(Decimal(1), ROUND_HALF_UP)) for code, total in totals.items()}


def excludes_metered(subscriptions: Iterable[Mapping[str, Any]]) -> bool:
    """True when a subscription counted in MRR has a metered item (left out, as Stripe does)."""
    return any(
        is_metered(item)
        for subscription in subscriptions
        if subscription.get("status") in MRR_STATUSES
        for item in (subscription.get("items") or {}).get("data") or []
    )
