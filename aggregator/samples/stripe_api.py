"""A local server that speaks Stripe's wire format, for the demo and the tests.

``start_fake_stripe()`` serves a seeded (or empty) account on a loopback port; the test
fixture in ``tests/support/fake_stripe.py`` wraps it. Only ``GET /v1/customers``,
``/v1/customers/<id>``, ``/v1/subscriptions`` and ``/v1/charges`` are served, with
Stripe's list objects, error
bodies, ``expand[]`` and its four-level limit.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

JSON = dict[str, Any]
LIVE_DEFAULT = frozenset({"active", "trialing", "past_due", "unpaid", "incomplete", "paused"})
BASE_TIME = 1_700_000_000


@dataclass
class Failure:
    """An injected answer: ``times`` requests (None: every one) to ``path`` (None: any)."""

    status: int
    times: int | None
    headers: dict[str, str] = field(default_factory=dict)
    error_type: str = "api_error"
    path: str | None = None


def _error(status: int, message: str, error_type: str = "invalid_request_error") -> web.Response:
    body = {"error": {"type": error_type, "message": message}}
    return web.json_response(body, status=status, headers={"Request-Id": "req_fake"})


def _expansions(query: Any) -> list[str]:
    """``expand[]=a`` or ``expand[0]=a`` (what stripe-python sends) into a list."""
    return [v for k, v in query.items() if k == "expand[]" or k.startswith("expand[")]


class FakeStripe:
    """In-memory Stripe account with switches for failures and counters of requests."""

    def __init__(self, key: str = "sk_test_fake") -> None:
        self.key = key
        self.url = ""
        self.customers: list[JSON] = []
        self.subscriptions: list[JSON] = []
        self.charges: list[JSON] = []
        self.products: dict[str, JSON] = {}
        self.requests: Counter[str] = Counter()
        self.queries: list[tuple[str, str]] = []
        self.failures: list[Failure] = []
        self.runner: web.AppRunner | None = None
        self._ids = itertools.count(1)
        self._clock = itertools.count(BASE_TIME, 1000)

    # --- data -----------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):04d}"

    def _created(self, created: int | None) -> int:
        return next(self._clock) if created is None else created

    def add_customer(
        self,
        email: str,
        *,
        created: int | None = None,
        currency: str | None = "usd",
        balance: int = 0,
        delinquent: bool = False,
        name: str | None = None,
        id: str | None = None,
    ) -> JSON:
        """Add a customer; ``created`` defaults to a clock that only moves forward."""
        customer: JSON = {
            "id": id or self._id("cus"),
            "object": "customer",
            "email": email,
            "name": name,
            "created": self._created(created),
            "currency": currency,
            "balance": balance,
            "delinquent": delinquent,
            "livemode": not self.key.startswith(("sk_test_", "rk_test_")),
            "metadata": {},
        }
        self.customers.append(customer)
        return customer

    def item(
        self,
        unit_amount: int,
        *,
        currency: str = "usd",
        interval: str = "month",
        interval_count: int = 1,
        quantity: int = 1,
        nickname: str | None = None,
        product: str = "Pro",
        current_period_end: int | None = None,
    ) -> JSON:
        """A subscription item with its price (the product is kept apart, as in Stripe)."""
        product_id = next((p for p, v in self.products.items() if v["name"] == product), None)
        if product_id is None:
            product_id = self._id("prod")
            self.products[product_id] = {"id": product_id, "object": "product", "name": product}
        price = {
            "id": self._id("price"),
            "object": "price",
            "active": True,
            "currency": currency,
            "nickname": nickname,
            "product": product_id,
            "recurring": {
                "interval": interval,
                "interval_count": interval_count,
                "usage_type": "licensed",
            },
            "type": "recurring",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
        }
        return {
            "id": self._id("si"),
            "object": "subscription_item",
            "price": price,
            "quantity": quantity,
            "current_period_end": current_period_end,
        }

    def add_subscription(
        self,
        customer: JSON | str,
        items: list[JSON],
        *,
        status: str = "active",
        created: int | None = None,
        trial_end: int | None = None,
        cancel_at_period_end: bool = False,
        current_period_end: int | None = None,
    ) -> JSON:
        """Add a subscription; ``current_period_end`` set here uses the pre-2025 shape."""
        customer_id = customer if isinstance(customer, str) else customer["id"]
        sub_id = self._id("sub")
        for item in items:
            item["subscription"] = sub_id
        subscription: JSON = {
            "id": sub_id,
            "object": "subscription",
            "customer": customer_id,
            "status": status,
            "created": self._created(created),
            "currency": items[0]["price"]["currency"] if items else "usd",
            "cancel_at_period_end": cancel_at_period_end,
            "trial_end": trial_end,
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "url": f"/v1/subscription_items?subscription={sub_id}",
            },
        }
        if current_period_end is not None:
            subscription["current_period_end"] = current_period_end
        self.subscriptions.append(subscription)
        return subscription

    def add_charge(
        self,
        customer: JSON | str,
        amount: int,
        *,
        currency: str = "usd",
        status: str = "succeeded",
        amount_refunded: int = 0,
        created: int | None = None,
    ) -> JSON:
        """Add a charge; ``status`` is succeeded, pending or failed."""
        customer_id = customer if isinstance(customer, str) else customer["id"]
        charge = {
            "id": self._id("ch"),
            "object": "charge",
            "customer": customer_id,
            "amount": amount,
            "amount_captured": amount if status == "succeeded" else 0,
            "amount_refunded": amount_refunded,
            "refunded": amount_refunded >= amount > 0,
            "currency": currency,
            "status": status,
            "paid": status == "succeeded",
            "created": self._created(created),
        }
        self.charges.append(charge)
        return charge

    def seed(self) -> None:
        """Sample customers for the demo and end-to-end tests."""
        ada = self.add_customer("ada@example.com", name="Ada Lovelace", currency="usd")
        self.add_subscription(
            ada,
            [self.item(4900, nickname="Pro monthly", current_period_end=BASE_TIME + 2_592_000)],
        )
        self.add_charge(ada, 4900)
        self.add_charge(ada, 4900)
        self.add_charge(ada, 4900, amount_refunded=1000)
        grace = self.add_customer("grace@example.com", name="Grace Hopper", currency="eur")
        self.add_subscription(
            grace,
            [self.item(99000, currency="eur", interval="year", quantity=3, product="Team")],
            status="canceled",
        )
        self.add_charge(grace, 297000, currency="eur")
        self.add_charge(grace, 297000, currency="eur", status="failed")
        self.add_customer("alan@example.com", name="Alan Turing", currency="jpy", balance=-500)

    # --- switches -------------------------------------------------------------------------

    def fail(
        self,
        status: int,
        times: int | None = 1,
        headers: dict[str, str] | None = None,
        error_type: str = "api_error",
        path: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests (None: all) to ``path`` (None: any) with an error."""
        self.failures.append(Failure(status, times, headers or {}, error_type, path))

    def fail_429(
        self, times: int = 1, retry_after: str | None = "0", path: str | None = None
    ) -> None:
        """Answer like Stripe's rate limiter, with ``Retry-After`` when given."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.fail(429, times, headers, "rate_limit_error", path)

    def fail_500(self, times: int | None = None, path: str | None = None) -> None:
        """Answer 500 to the next ``times`` requests, or to all of them."""
        self.fail(500, times, path=path)

    def heal(self) -> None:
        """Drop every injected failure."""
        self.failures.clear()

    @property
    def total_requests(self) -> int:
        """Requests received on every path, failures included."""
        return sum(self.requests.values())

    # --- HTTP -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving this account."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/v1/customers", self._customers)
        app.router.add_get("/v1/customers/{id}", self._customer)
        app.router.add_get("/v1/subscriptions", self._subscriptions)
        app.router.add_get("/v1/charges", self._charges)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests[request.path] += 1
        self.queries.append((request.path, request.query_string))
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return _error(401, "Invalid API Key provided: sk_****")
        failure = next((f for f in self.failures if f.path in (None, request.path)), None)
        if failure is not None:
            if failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self.failures.remove(failure)
            body = {"error": {"type": failure.error_type, "message": "Injected failure."}}
            return web.json_response(body, status=failure.status, headers=failure.headers)
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPNotFound:
            return _error(404, f"Unrecognized request URL (GET: {request.path}).")
        return response

    def _page(self, request: web.Request, objects: list[JSON]) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit", "10"))
        except ValueError:
            return _error(400, "Invalid integer: limit")
        if not 1 <= limit <= 100:
            return _error(400, "Invalid limit: must be between 1 and 100")
        expand = _expansions(query)
        for path in expand:
            parts = path.split(".")
            if len(parts[1:] if parts[0] == "data" else parts) > 4:
                return _error(400, "You cannot expand more than 4 levels of a property.")
        ordered = sorted(objects, key=lambda o: o["created"], reverse=True)
        after = query.get("starting_after")
        if after:
            ids = [o["id"] for o in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        data = [self._expand(json.loads(json.dumps(o)), expand) for o in ordered[:limit]]
        body = {
            "object": "list",
            "data": data,
            "has_more": len(ordered) > limit,
            "url": request.path,
        }
        return web.json_response(body)

    def _expand(self, obj: JSON, expand: list[str]) -> JSON:
        if "data.items.data.price.product" in expand:
            for item in obj.get("items", {}).get("data", []):
                product = item["price"]["product"]
                item["price"]["product"] = self.products.get(product, product)
        return obj

    async def _customers(self, request: web.Request) -> web.Response:
        email = request.query.get("email")
        found = [c for c in self.customers if email is None or c["email"] == email]
        return self._page(request, found)

    async def _customer(self, request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        for customer in self.customers:
            if customer["id"] == wanted:
                return web.json_response(customer)
        return _error(404, f"No such customer: '{wanted}'")

    async def _subscriptions(self, request: web.Request) -> web.Response:
        customer = request.query.get("customer")
        status = request.query.get("status")
        found = [
            s
            for s in self.subscriptions
            if (customer is None or s["customer"] == customer)
            and (
                status == "all"
                or (s["status"] == status if status else s["status"] in LIVE_DEFAULT)
            )
        ]
        return self._page(request, found)

    async def _charges(self, request: web.Request) -> web.Response:
        customer = request.query.get("customer")
        found = [c for c in self.charges if customer is None or c["customer"] == customer]
        return self._page(request, found)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port); returns the base URL."""
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        bound = self.runner.addresses[0][1]
        self.url = f"http://{host}:{bound}"
        return self.url

    async def close(self) -> None:
        """Stop serving."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def start_fake_stripe(
    seed: bool = True, host: str = "127.0.0.1", port: int = 0, key: str = "sk_test_fake"
) -> FakeStripe:
    """Start a fake Stripe (seeded with ada@, grace@ and alan@example.com); close() it after."""
    fake = FakeStripe(key)
    if seed:
        fake.seed()
    await fake.start(host, port)
    return fake


# --- ``python -m aggregator.samples.stripe_api``: the server on its own -----------------

# stripe-mock's port and the test key its documentation uses, so that this server stands in
# for stripe-mock unchanged (the offline compose stack runs it so).
STANDALONE_PORT = 12111
STANDALONE_KEY = "sk_test_123"


def main(argv: list[str] | None = None) -> None:
    """Serve the sample Stripe account until SIGINT or SIGTERM (exit 0); see ``--help``."""
    import argparse
    import asyncio
    import signal
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m aggregator.samples.stripe_api",
        description="A local server speaking Stripe's API wire format, seeded with the "
        "sample customers ada@, grace@ and alan@example.com.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=STANDALONE_PORT, help="port (0: any free one)")
    parser.add_argument("--key", default=STANDALONE_KEY, help="the only secret API key accepted")
    parser.add_argument("--empty", action="store_true", help="serve no sample data")
    args = parser.parse_args(argv)

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            fake = await start_fake_stripe(
                seed=not args.empty, host=args.host, port=args.port, key=args.key
            )
        except OSError as exc:
            sys.stderr.write(f"cannot listen on {args.host}:{args.port}: {exc.strerror}\n")
            return 1
        data = "no data" if args.empty else f"{len(fake.customers)} sample customers"
        print(f"Stripe-shaped API on {fake.url} (key {args.key}, {data})", flush=True)
        try:
            await stop.wait()
        finally:
            await fake.close()
        print("Stripe-shaped API stopped", flush=True)
        return 0

    raise SystemExit(asyncio.run(serve()))


if __name__ == "__main__":
    main()
