"""The ``stripe`` connector: a customer's billing at a glance, via the official library.

Calls per profile (all ``GET``, read-only; the README lists the permissions):

1. ``/v1/customers?email=E`` with the email as Groove wrote it and, when that differs, in
   lower case too (Stripe's email filter is case-sensitive), concurrently. No customer:
   nothing else is asked.
2. For each customer of the email (the newest ``max_customers``), concurrently:
   ``/v1/subscriptions?customer=C&status=all``, ``/v1/charges?customer=C`` and
   ``/v1/invoices?customer=C&status=open``.

A known customer costs 1 (or 2) + 3 calls in two round trips. Only when needed, a third:
the next pages of charges (``has_more``, up to ``max_charges`` succeeded charges), the
open disputes of disputed charges, and what Stripe cannot expand within its four-level
limit (product names, a tiered price's tiers, an item discount's coupon), which the
process then keeps for ``catalog_ttl`` seconds.

Each call is limited, retried and logged on its own (``manages_calls``): the account-wide
and per-endpoint call windows and the in-flight bound are shared by every Stripe call of
the process; a 429/5xx is retried (honoring ``Retry-After`` and ``Stripe-Should-Retry``)
while the deadline allows, and only that call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import aiohttp
import stripe
from pydantic import Field, SecretStr

from aggregator.emails import as_sent
from aggregator.errors import FatalError, RetriableError, UnavailableError
from connectors.base import Connector, ConnectorSettings
from connectors.stripe_catalog import Catalog
from connectors.stripe_fields import ENDED, FIELDS, JSON, newest_first, summarize
from connectors.stripe_http import (
    KEY_REFUSED,
    BoundedHTTPClient,
    KeyRefusedError,
    LimitSettings,
    StripeLimits,
    account_id,
    map_error,
    shared,
)

T = TypeVar("T")
log = logging.getLogger("connectors.stripe")

DASHBOARD = "https://dashboard.stripe.com"
PAGE = 100
LIVE_RATE, TEST_RATE, ENDPOINT_RATE = 100.0, 25.0, 25.0
# Expanding a discount's coupon needs API version 2025-09-30 or later (``source.coupon``);
# earlier versions embed it as ``coupon``.
_SOURCE_COUPON_SINCE = "2025-09-30"
_DISPUTED_LOOKED_UP = 3
_CHARGE_KEYS = (
    *("id", "amount", "amount_captured", "amount_refunded", "refunded", "captured"),
    *("currency", "status", "created", "disputed", "failure_message", "customer"),
)
_INVOICE_KEYS = (
    *("id", "status", "amount_due", "amount_remaining", "currency", "created", "due_date"),
    *("hosted_invoice_url", "next_payment_attempt", "collection_method", "attempted"),
    *("attempt_count", "customer"),
)


class StripeSettings(ConnectorSettings):
    """Settings of a ``type: stripe`` connector."""

    api_key: SecretStr = Field(description="Secret or restricted key (read-only is enough).")
    api_base: str = Field(
        default="https://api.stripe.com", description="Stripe API address (stripe-mock in tests)."
    )
    api_version: str | None = Field(default=None, description="Pin a Stripe API version.")
    timeout: float = Field(default=2.0, gt=0, description="Seconds this connector may take.")
    retries: int = Field(
        default=2, ge=0, le=5, description="Extra tries of one Stripe call after a 429/5xx."
    )
    max_concurrency: int | None = Field(
        default=25, ge=1, description="Stripe calls in flight at most, for the whole process."
    )
    rate_limit: float | None = Field(
        default=None,
        gt=0,
        description="Stripe calls per second for the whole process; null: Stripe's limit "
        "for the key (100 live, 25 test mode).",
    )
    endpoint_rate_limit: float = Field(
        default=ENDPOINT_RATE, gt=0, description="Stripe calls per second to any one endpoint."
    )
    max_customers: int = Field(
        default=10, ge=1, le=100, description="Customers sharing the email that are summed up."
    )
    max_charges: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Succeeded charges read per customer (newest first, 100 per call).",
    )
    max_body_bytes: int = Field(
        default=4_194_304,
        ge=65_536,
        le=67_108_864,
        description="Larger Stripe answers (on the wire or decompressed) are an error.",
    )
    catalog_ttl: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds product names, price tiers and coupons are kept in memory.",
    )


def _slim(obj: Mapping[str, Any], keys: Iterable[str]) -> JSON:
    return {key: obj.get(key) for key in keys}


class StripeConnector(Connector[StripeSettings]):
    """Finds every customer of the email and summarizes their billing."""

    settings_model: ClassVar[type[ConnectorSettings]] = StripeSettings
    manages_calls: ClassVar[bool] = True

    def __init__(self, name: str, settings: StripeSettings) -> None:
        super().__init__(name, settings)
        self._client: stripe.StripeClient | None = None
        key = settings.api_key.get_secret_value()
        self._test_mode = key.startswith(("sk_test_", "rk_test_"))
        self._limits: StripeLimits | None = None
        self._catalog: Catalog | None = None
        self._refusal_logged = False
        version = settings.api_version
        self._source_coupon = version is None or version >= _SOURCE_COUPON_SINCE
        self.clock: Callable[[], float] = time.time

    async def open(self, session: aiohttp.ClientSession) -> None:
        """Build a Stripe client over the app's session; join the process-wide limits."""
        # The library logs every request URL at INFO, and ours carry the customer's email.
        logging.getLogger("stripe").setLevel(logging.WARNING)
        settings = self.settings
        http_client = BoundedHTTPClient(session, settings.timeout, settings.max_body_bytes)
        self._client = stripe.StripeClient(
            settings.api_key.get_secret_value(),
            base_addresses={"api": settings.api_base.rstrip("/")},
            stripe_version=settings.api_version,
            http_client=http_client,
            max_network_retries=0,
        )
        account = account_id(settings.api_base, settings.api_key.get_secret_value())
        figures = LimitSettings(
            rate=settings.rate_limit or (TEST_RATE if self._test_mode else LIVE_RATE),
            endpoint_rate=settings.endpoint_rate_limit,
            concurrency=settings.max_concurrency or 1_000_000,
        )
        self._limits = shared(
            "limits", account, lambda: StripeLimits(figures), lambda held: held.figures == figures
        )
        ttl = settings.catalog_ttl
        self._catalog = shared("catalog", account, lambda: Catalog(ttl), lambda c: c.ttl == ttl)

    async def close(self) -> None:
        """Forget the client; the session belongs to the app, the limits to the process."""
        self._client = None

    @property
    def client(self) -> stripe.StripeClient:
        """The open client (``open`` must have run)."""
        if self._client is None:
            raise FatalError("stripe: connector not opened")
        return self._client

    @property
    def limits(self) -> StripeLimits:
        """The call limits shared with every connector using this account in the process."""
        if self._limits is None:
            raise FatalError("stripe: connector not opened")
        return self._limits

    def _time_left(self) -> float | None:
        """Seconds left for the running fetch (None outside ``fetch``)."""
        end = self.budget_end()
        return None if end is None else end - asyncio.get_running_loop().time()

    def declared_shape(self) -> Mapping[str, Any] | None:
        """The documented fields, every one present in each answer (null when unknown)."""
        return dict.fromkeys(FIELDS)

    def dashboard_url(self, customer_id: str) -> str:
        """The customer's page in the Stripe dashboard, test-mode path for a test key."""
        mode = "/test" if self._test_mode else ""
        return f"{DASHBOARD}{mode}/customers/{customer_id}"

    # --- one call ---------------------------------------------------------------------------

    async def _call(self, endpoint: str, make: Callable[[], Awaitable[T]]) -> T:
        """One Stripe call under the shared limits, retried alone while the budget allows."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.limits.slot(endpoint):
                    result = await make()
            except stripe.StripeError as exc:
                error = map_error(exc)
            else:
                self._refusal_logged = False
                return result
            if isinstance(error, KeyRefusedError) and not self._refusal_logged:
                self._refusal_logged = True
                log.error(KEY_REFUSED if self.name == "stripe" else f"{self.name}: {KEY_REFUSED}")
            if not isinstance(error, RetriableError) or attempt > self.settings.retries:
                raise error
            pause = self._backoff(attempt, error.retry_after)
            left = self._time_left()
            if left is not None and pause >= left:
                raise error
            await asyncio.sleep(pause)

    async def _list(
        self,
        endpoint: str,
        list_async: Callable[..., Awaitable[Any]],
        params: Mapping[str, Any],
        *,
        cap: int,
        counted: Callable[[JSON], bool] = lambda _: True,
        keep: Iterable[str] | None = None,
    ) -> tuple[list[JSON], bool]:
        """Objects of a list, newest first, page after page until ``cap`` of them are
        ``counted`` or the budget leaves no time for another page; True when cut short."""
        found: list[JSON] = []
        total = 0
        after: str | None = None
        keys = list(keep) if keep is not None else None
        loop = asyncio.get_running_loop()
        while True:
            page_params = {**params, "limit": PAGE} | ({"starting_after": after} if after else {})
            started = loop.time()
            page = await self._call(endpoint, functools.partial(list_async, params=page_params))
            data = [o.to_dict() for o in page.data]
            found += [_slim(o, keys) for o in data] if keys is not None else data
            total += sum(1 for o in data if counted(o))
            if not page.has_more or not data:
                return found, False
            left = self._time_left()
            if total >= cap or (left is not None and left < 2 * (loop.time() - started)):
                return found, True
            after = str(data[-1]["id"])

    # --- a profile --------------------------------------------------------------------------

    async def _customers(self, email: str) -> list[JSON]:
        written = as_sent(email)
        spellings = [written] if written == email else [written, str(email)]
        expand = ["data.invoice_settings.default_payment_method", "data.default_source"]
        if self._source_coupon:
            expand.append("data.discount.source.coupon")
        v1 = self.client.v1
        pages = await asyncio.gather(
            *(
                self._call(
                    "customers.list",
                    functools.partial(
                        v1.customers.list_async,
                        params={"email": spelling, "limit": PAGE, "expand": expand},
                    ),
                )
                for spelling in spellings
            )
        )
        by_id: dict[str, JSON] = {}
        for page in pages:
            for customer in page.data:
                by_id.setdefault(str(customer.id), customer.to_dict())
        return newest_first(by_id.values())

    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        customers = await self._customers(email)
        if not customers:
            return None
        chosen = customers[: self.settings.max_customers]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._customer_data(str(c["id"]))) for c in chosen]
        except ExceptionGroup as failed:
            raise _first(failed) from None
        subscriptions: list[JSON] = []
        charges: list[JSON] = []
        invoices: list[JSON] = []
        disputes: list[JSON] = []
        truncated = False
        for task in tasks:
            subs, (customer_charges, cut), customer_invoices, customer_disputes = task.result()
            subscriptions += subs
            charges += customer_charges
            truncated = truncated or cut
            invoices += customer_invoices
            disputes += customer_disputes
        fields = summarize(
            customers,
            subscriptions,
            charges,
            invoices,
            disputes,
            charges_truncated=truncated,
            now=self.clock(),
        )
        fields["dashboard_url"] = self.dashboard_url(str(fields["id"]))
        return fields

    async def _customer_data(
        self, customer_id: str
    ) -> tuple[list[JSON], tuple[list[JSON], bool], list[JSON], list[JSON]]:
        async with asyncio.TaskGroup() as group:
            subs = group.create_task(self._subscriptions(customer_id))
            charges = group.create_task(self._charges_and_disputes(customer_id))
            invoices = group.create_task(self._invoices(customer_id))
        found_charges, truncated, disputes = charges.result()
        return subs.result(), (found_charges, truncated), invoices.result(), disputes

    async def _charges_and_disputes(self, customer_id: str) -> tuple[list[JSON], bool, list[JSON]]:
        charges, truncated = await self._charges(customer_id)
        return charges, truncated, await self._disputes(charges)

    async def _subscriptions(self, customer_id: str) -> list[JSON]:
        expand = [
            "data.default_payment_method",
            "data.default_source",
            "data.discounts",
            "data.items.data.discounts",
        ]
        if self._source_coupon:
            expand.append("data.discounts.source.coupon")
        params = {"customer": customer_id, "status": "all", "expand": expand}
        subs, _ = await self._list(
            "subscriptions.list", self.client.v1.subscriptions.list_async, params, cap=1000
        )
        await self._complete(subs)
        return subs

    async def _charges(self, customer_id: str) -> tuple[list[JSON], bool]:
        """The newest charges up to the ``max_charges``-th succeeded one (failed and pending
        ones do not use up that budget); True when older ones were left out."""
        charges, truncated = await self._list(
            "charges.list",
            self.client.v1.charges.list_async,
            {"customer": customer_id},
            cap=self.settings.max_charges,
            counted=_succeeded,
            keep=_CHARGE_KEYS,
        )
        succeeded = 0
        for index, charge in enumerate(charges):
            succeeded += _succeeded(charge)
            if succeeded == self.settings.max_charges:
                return charges[: index + 1], truncated or index + 1 < len(charges)
        return charges, truncated

    async def _invoices(self, customer_id: str) -> list[JSON]:
        invoices, _ = await self._list(
            "invoices.list",
            self.client.v1.invoices.list_async,
            {"customer": customer_id, "status": "open"},
            cap=1000,
            keep=_INVOICE_KEYS,
        )
        return invoices

    async def _disputes(self, charges: list[JSON]) -> list[JSON]:
        disputed = [c for c in newest_first(charges) if c.get("disputed")][:_DISPUTED_LOOKED_UP]
        if not disputed:
            return []
        v1 = self.client.v1
        pages = await asyncio.gather(
            *(
                self._call(
                    "disputes.list",
                    functools.partial(
                        v1.disputes.list_async, params={"charge": charge["id"], "limit": 10}
                    ),
                )
                for charge in disputed
            )
        )
        return [d.to_dict() for page in pages for d in page.data]

    # --- what lists cannot expand -----------------------------------------------------------

    async def _complete(self, subs: list[JSON]) -> None:
        """Fill in, from the catalog or Stripe, what the subscriptions need to be read."""
        current = [s for s in subs if s.get("status") not in ENDED]
        await asyncio.gather(*(self._all_items(s) for s in current if s["items"].get("has_more")))
        assert self._catalog is not None
        await self._catalog.complete(subs, current, self._lookup, self.client.v1)

    async def _lookup(self, endpoint: str, make: Callable[[], Awaitable[T]]) -> T | None:
        """A catalog call; an answer such as 404 (a deleted coupon) leaves the value unknown
        (the plan shows the id, MRR is null) instead of failing the whole profile."""
        try:
            return await self._call(endpoint, make)
        except KeyRefusedError:
            raise
        except FatalError:
            return None

    async def _all_items(self, subscription: JSON) -> None:
        items, _ = await self._list(
            "subscription_items.list",
            self.client.v1.subscription_items.list_async,
            {"subscription": subscription["id"], "expand": ["data.discounts"]},
            cap=1000,
        )
        subscription["items"] = {"object": "list", "data": items, "has_more": False}

    # --- other uses -------------------------------------------------------------------------

    async def email_of_customer(self, customer_id: str) -> str | None:
        """The email of a Stripe customer (for webhook events that only name the customer)."""
        async with asyncio.timeout(self.settings.timeout):
            customer = await self._call(
                "customers.retrieve",
                functools.partial(self.client.v1.customers.retrieve_async, customer_id),
            )
        email = customer.to_dict().get("email")
        return email if isinstance(email, str) and email else None

    async def check(self) -> None:
        """One cheap call that proves the key works and Stripe answers."""
        try:
            async with asyncio.timeout(self.settings.timeout):
                await self._call(
                    "customers.list",
                    functools.partial(self.client.v1.customers.list_async, params={"limit": 1}),
                )
        except TimeoutError:
            raise UnavailableError(f"stripe: no answer within {self.settings.timeout}s") from None


def _succeeded(charge: Mapping[str, Any]) -> bool:
    return charge.get("status") == "succeeded"


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first failure inside (possibly nested) task groups."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
