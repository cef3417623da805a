"""The ``stripe`` connector: a customer's billing at a glance, via the official library.

Stripe calls per profile (all ``GET``, read-only; a restricted key with read access to
customers, subscriptions and charges is enough):

1. ``/v1/customers?email=E&limit=100``: every customer with that exact email, most recent
   first. The most recently created one is used and ``customers_count`` says how many
   there were. No customer: that is the only call.
2. ``/v1/subscriptions?customer=C&status=all&expand[]=data.items.data.price.product``
3. ``/v1/charges?customer=C&limit=max_charges``

Calls 2 and 3 run concurrently, so a known customer costs three calls in two round trips.
Subscriptions are not expanded into call 1: the deepest expansion Stripe allows is four
levels (``data.items.data.price.product`` on a subscription list), which cannot reach a
product from a customer list, and ``customer.subscriptions`` leaves out canceled ones.

The main subscription (status, plan, period end, trial end, cancel flag) is the most
recent active, trialing or past_due one, else the most recent of any status. ``mrr`` sums
the items of every active, trialing or past_due subscription in the main currency,
normalized to a month (year / 12, week * 52 / 12, day * 365.25 / 12, divided by
``interval_count``); discounts, metered and tiered prices are left out. Charges are the
latest ``max_charges``: ``charges_count``, ``first_charge_at`` and ``lifetime_value``
(succeeded charges minus refunds, in the customer's currency) cover only those.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Mapping
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

import aiohttp
import stripe
from pydantic import Field, SecretStr

from aggregator.errors import ConnectorError, FatalError, RetriableError, UnavailableError
from aggregator.merge import money
from connectors.base import Connector, ConnectorSettings

T = TypeVar("T")

LIVE_STATUSES = frozenset({"active", "trialing", "past_due"})
DASHBOARD = "https://dashboard.stripe.com"
_MONTHS_PER_INTERVAL: dict[str, Decimal] = {
    "day": Decimal(12) / Decimal("365.25"),
    "week": Decimal(12) / Decimal(52),
    "month": Decimal(1),
    "year": Decimal(12),
}


class StripeSettings(ConnectorSettings):
    """Settings of a ``type: stripe`` connector."""

    api_key: SecretStr = Field(description="Secret or restricted key (read-only is enough).")
    api_base: str = Field(
        default="https://api.stripe.com", description="Stripe API address (stripe-mock in tests)."
    )
    api_version: str | None = Field(default=None, description="Pin a Stripe API version.")
    timeout: float = Field(default=2.0, gt=0, description="Seconds this connector may take.")
    retries: int = Field(default=2, ge=0, le=5, description="Extra tries of a 429/5xx.")
    max_concurrency: int | None = Field(default=10, ge=1, description="Stripe calls in flight.")
    rate_limit: float | None = Field(
        default=25.0, gt=0, description="Stripe calls per second (Stripe allows 25/endpoint)."
    )
    max_charges: int = Field(100, ge=1, le=100, description="Latest charges considered.")


def _iso(timestamp: int | None) -> str | None:
    if timestamp is None:
        return None
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _header(error: stripe.StripeError, name: str) -> str | None:
    headers: Mapping[str, str] = error.headers or {}
    lowered = name.lower()
    return next((value for key, value in headers.items() if key.lower() == lowered), None)


def _retry_after(error: stripe.StripeError) -> float | None:
    value = _header(error, "Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def map_error(error: stripe.StripeError) -> ConnectorError:
    """Translate a Stripe library error into what the engine should do next."""
    status = error.http_status
    if isinstance(error, stripe.AuthenticationError):
        return FatalError("stripe: invalid API key")
    if isinstance(error, stripe.PermissionError):
        return FatalError("stripe: API key lacks read access to customers, subscriptions, charges")
    if isinstance(error, stripe.APIConnectionError):
        cause = error.__cause__
        if isinstance(cause, (aiohttp.ClientConnectorError, ConnectionError)):
            return UnavailableError("stripe: unreachable")
        return RetriableError("stripe: connection failed")
    if (_header(error, "Stripe-Should-Retry") or "").lower() == "false":
        return FatalError(f"stripe: HTTP {status}, not to be retried")
    if isinstance(error, stripe.RateLimitError) or status == 429:
        return RetriableError("stripe: rate limited", retry_after=_retry_after(error))
    if isinstance(error, stripe.InvalidRequestError):
        return FatalError(f"stripe: invalid request ({error.param or error.code or status})")
    if status is not None and status >= 500:
        return RetriableError(f"stripe: HTTP {status}", retry_after=_retry_after(error))
    return FatalError(f"stripe: {type(error).__name__} (HTTP {status})")


async def _call(call: Awaitable[T]) -> T:
    try:
        return await call
    except stripe.StripeError as exc:
        raise map_error(exc) from None


def _monthly(item: Mapping[str, Any]) -> Decimal | None:
    price = item.get("price") or {}
    recurring = price.get("recurring") or {}
    if recurring.get("usage_type") == "metered":
        return None
    unit = price.get("unit_amount")
    if unit is None and price.get("unit_amount_decimal") is not None:
        unit = Decimal(str(price["unit_amount_decimal"]))
    factor = _MONTHS_PER_INTERVAL.get(recurring.get("interval", ""))
    if unit is None or factor is None:
        return None
    count = recurring.get("interval_count") or 1
    quantity = item.get("quantity")
    return Decimal(unit) * (1 if quantity is None else quantity) / (factor * count)


def _items(subscription: Mapping[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (subscription.get("items") or {}).get("data") or []
    return items


def _plan(subscription: Mapping[str, Any]) -> str | None:
    for item in _items(subscription):
        price = item.get("price") or {}
        if price.get("nickname"):
            return str(price["nickname"])
        product = price.get("product")
        if isinstance(product, Mapping) and product.get("name"):
            return str(product["name"])
    return None


def _period_end(subscription: Mapping[str, Any]) -> int | None:
    if subscription.get("current_period_end") is not None:
        return int(subscription["current_period_end"])
    ends = [i["current_period_end"] for i in _items(subscription) if i.get("current_period_end")]
    return min(ends) if ends else None


def _newest_first(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(objects, key=lambda o: o.get("created") or 0, reverse=True)


def subscription_fields(subs: list[dict[str, Any]], currency: str | None) -> dict[str, Any]:
    """Fields of the main subscription and the monthly recurring revenue of the live ones."""
    subs = _newest_first(subs)
    live = [s for s in subs if s.get("status") in LIVE_STATUSES]
    main = live[0] if live else subs[0] if subs else None
    if main is None:
        return {
            "subscriptions_count": 0,
            "subscription_status": None,
            "plan": None,
            "mrr": money(0, currency) if currency else None,
            "current_period_end": None,
            "trial_end": None,
            "cancel_at_period_end": None,
        }
    currency = str(main.get("currency") or currency or "usd")
    mrr = Decimal(0)
    for sub in live:
        for item in _items(sub):
            monthly = _monthly(item)
            item_currency = (item.get("price") or {}).get("currency") or sub.get("currency")
            if monthly is not None and str(item_currency).lower() == currency.lower():
                mrr += monthly
    return {
        "subscriptions_count": len(subs),
        "subscription_status": main.get("status"),
        "plan": _plan(main),
        "mrr": money(int(mrr.quantize(Decimal(1))), currency),
        "current_period_end": _iso(_period_end(main)),
        "trial_end": _iso(main.get("trial_end")),
        "cancel_at_period_end": bool(main.get("cancel_at_period_end")),
    }


def charge_fields(charges: list[dict[str, Any]], currency: str | None) -> dict[str, Any]:
    """Last and first charge, how many, and the lifetime value of the succeeded ones."""
    charges = _newest_first(charges)
    if not charges:
        return {
            "charges_count": 0,
            "last_charge_amount": None,
            "last_charge_at": None,
            "last_charge_status": None,
            "first_charge_at": None,
            "lifetime_value": money(0, currency) if currency else None,
        }
    last, first = charges[0], charges[-1]
    currency = (currency or str(last["currency"])).lower()
    value = sum(
        int(c.get("amount") or 0) - int(c.get("amount_refunded") or 0)
        for c in charges
        if c.get("status") == "succeeded" and str(c.get("currency")).lower() == currency
    )
    return {
        "charges_count": len(charges),
        "last_charge_amount": money(int(last.get("amount") or 0), str(last["currency"])),
        "last_charge_at": _iso(last.get("created")),
        "last_charge_status": last.get("status"),
        "first_charge_at": _iso(first.get("created")),
        "lifetime_value": money(value, currency),
    }


class StripeConnector(Connector[StripeSettings]):
    """Finds the customer by email and summarizes subscriptions and charges."""

    settings_model: ClassVar[type[ConnectorSettings]] = StripeSettings

    def __init__(self, name: str, settings: StripeSettings) -> None:
        super().__init__(name, settings)
        self._client: stripe.StripeClient | None = None
        key = settings.api_key.get_secret_value()
        self._test_mode = key.startswith(("sk_test_", "rk_test_"))

    async def open(self, session: aiohttp.ClientSession) -> None:
        """Build a Stripe client that sends its requests through the app's session."""
        # The library logs every request URL at INFO, and ours carry the customer's email.
        logging.getLogger("stripe").setLevel(logging.WARNING)
        http_client = stripe.AIOHTTPClient(
            session=session, timeout=aiohttp.ClientTimeout(total=self.settings.timeout)
        )
        self._client = stripe.StripeClient(
            self.settings.api_key.get_secret_value(),
            base_addresses={"api": self.settings.api_base.rstrip("/")},
            stripe_version=self.settings.api_version,
            http_client=http_client,
            max_network_retries=0,
        )

    async def close(self) -> None:
        """Forget the client; the session belongs to the app."""
        self._client = None

    @property
    def client(self) -> stripe.StripeClient:
        """The open client (``open`` must have run)."""
        if self._client is None:
            raise FatalError("stripe: connector not opened")
        return self._client

    def dashboard_url(self, customer_id: str) -> str:
        """The customer's page in the Stripe dashboard, test-mode path for a test key."""
        mode = "/test" if self._test_mode else ""
        return f"{DASHBOARD}{mode}/customers/{customer_id}"

    async def email_of_customer(self, customer_id: str) -> str | None:
        """The email of a Stripe customer (for webhook events that only name the customer)."""
        async with asyncio.timeout(self.settings.timeout):
            customer = await _call(self.client.v1.customers.retrieve_async(customer_id))
        email = customer.to_dict().get("email")
        return email if isinstance(email, str) and email else None

    async def check(self) -> None:
        """One cheap call that proves the key works and Stripe answers."""
        try:
            async with asyncio.timeout(self.settings.timeout):
                await _call(self.client.v1.customers.list_async(params={"limit": 1}))
        except TimeoutError:
            raise UnavailableError(f"stripe: no answer within {self.settings.timeout}s") from None

    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        v1 = self.client.v1
        found = await _call(v1.customers.list_async(params={"email": email, "limit": 100}))
        customers = _newest_first([c.to_dict() for c in found.data])
        if not customers:
            return None
        customer = customers[0]
        customer_id = str(customer["id"])
        try:
            async with asyncio.TaskGroup() as group:
                subs_task = group.create_task(
                    _call(
                        v1.subscriptions.list_async(
                            params={
                                "customer": customer_id,
                                "status": "all",
                                "limit": 100,
                                "expand": ["data.items.data.price.product"],
                            }
                        )
                    )
                )
                charges_task = group.create_task(
                    _call(
                        v1.charges.list_async(
                            params={"customer": customer_id, "limit": self.settings.max_charges}
                        )
                    )
                )
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        subs = [s.to_dict() for s in subs_task.result().data]
        charges = [c.to_dict() for c in charges_task.result().data]
        currency = customer.get("currency") or next(
            (s.get("currency") for s in _newest_first(subs) if s.get("currency")), None
        )
        balance = customer.get("balance")
        return {
            "id": customer_id,
            "created_at": _iso(customer.get("created")),
            "currency": currency,
            "balance": money(int(balance), currency) if currency and balance is not None else None,
            "delinquent": bool(customer.get("delinquent")),
            "dashboard_url": self.dashboard_url(customer_id),
            "customers_count": len(customers),
            **subscription_fields(subs, currency),
            **charge_fields(charges, currency),
        }
