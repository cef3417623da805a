"""A local server that speaks Stripe's wire format, for the demo, the tests and ``bench/``.

``start_fake_stripe()`` serves a seeded (or empty) account on a loopback port; the test
fixture in ``tests/support/fake_stripe.py`` wraps it. ``GET`` only, as Stripe answers:

- ``/v1/customers`` (``email``: case-sensitive, as Stripe's filter) and ``/v1/customers/<id>``
- ``/v1/subscriptions`` (``customer``, ``status``; canceled ones only with ``status=all``)
  and ``/v1/subscription_items?subscription=``
- ``/v1/charges?customer=``, ``/v1/invoices`` (``customer``, ``status``),
  ``/v1/disputes`` (``charge``, ``payment_intent``)
- ``/v1/products`` (``ids[]``), ``/v1/products/<id>``, ``/v1/prices/<id>``, ``/v1/coupons/<id>``

with Stripe's list objects (``has_more``, ``starting_after``, ``limit`` 1-100), error
bodies, ``expand[]`` of any id (and of a price's ``tiers``, which Stripe only includes on
request) refused past four levels, ``data`` included, as Stripe refuses it
(https://docs.stripe.com/api/expanding_objects).
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from aggregator.samples.serving import serve

JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LIVE_DEFAULT = frozenset({"active", "trialing", "past_due", "unpaid", "incomplete", "paused"})
BASE_TIME = 1_700_000_000
MAX_EXPAND_LEVELS = 4
_INCLUDABLE = {"price": {"tiers"}}


class ApiError(Exception):
    """An answer in Stripe's error shape."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def response(self) -> web.Response:
        """The error as Stripe sends it."""
        error: JSON = {"type": "invalid_request_error", "message": str(self)}
        if self.code:
            error["code"] = self.code
        body = {"error": error}
        return web.json_response(body, status=self.status, headers={"Request-Id": "req_fake"})


def _expansions(query: Any) -> list[str]:
    """``expand[]=a`` or ``expand[0]=a`` (what stripe-python sends) into a list."""
    return [v for k, v in query.items() if k == "expand[]" or k.startswith("expand[")]


def _array(query: Any, name: str) -> list[str]:
    """``name[]=a`` or ``name[0]=a`` into a list."""
    return [v for k, v in query.items() if k == f"{name}[]" or k.startswith(f"{name}[")]


class FakeStripe:
    """An in-memory Stripe account served over HTTP, counting the requests it receives."""

    def __init__(self, key: str = "sk_test_fake") -> None:
        self.key = key
        self.url = ""
        self.customers: list[JSON] = []
        self.subscriptions: list[JSON] = []
        self.charges: list[JSON] = []
        self.invoices: list[JSON] = []
        self.disputes: list[JSON] = []
        self.products: dict[str, JSON] = {}
        self.prices: dict[str, JSON] = {}
        self.coupons: dict[str, JSON] = {}
        self.objects: dict[str, JSON] = {}
        self.requests: Counter[str] = Counter()
        self.queries: list[tuple[str, str]] = []
        self.runner: web.AppRunner | None = None
        self._tiers: dict[str, list[JSON]] = {}
        self._ids = itertools.count(1)
        self._clock = itertools.count(BASE_TIME, 1000)

    # --- data -----------------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        """A fresh id with Stripe's prefix for the kind of object."""
        return f"{prefix}_fake{next(self._ids):04d}"

    def _created(self, created: int | None) -> int:
        return next(self._clock) if created is None else created

    def add(self, obj: JSON) -> JSON:
        """Store any Stripe object (by its ``object``) so it is listed or expanded; returns it."""
        kind = obj.get("object")
        lists = {
            "customer": self.customers,
            "subscription": self.subscriptions,
            "charge": self.charges,
            "invoice": self.invoices,
            "dispute": self.disputes,
        }
        if kind in lists:
            lists[str(kind)].append(obj)
        elif kind == "product":
            self.products[obj["id"]] = obj
        elif kind == "coupon":
            self.coupons[obj["id"]] = obj
        elif kind == "price":
            if isinstance(obj.get("tiers"), list):
                self._tiers[obj["id"]] = obj.pop("tiers")
            self.prices[obj["id"]] = obj
        if kind == "subscription":
            for item in obj.get("items", {}).get("data", []):
                self._store_price(item)
        self.objects[obj["id"]] = obj
        return obj

    def _store_price(self, item: JSON) -> None:
        price = item.get("price")
        if isinstance(price, dict):
            if isinstance(price.get("tiers"), list):
                self._tiers[price["id"]] = price.pop("tiers")
            self.prices.setdefault(price["id"], price)
        self.objects[item["id"]] = item

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
        return self.add(
            {
                "id": id or self.new_id("cus"),
                "object": "customer",
                "email": email,
                "name": name,
                "created": self._created(created),
                "currency": currency,
                "balance": balance,
                "delinquent": delinquent,
                "default_source": None,
                "discount": None,
                "invoice_settings": {"default_payment_method": None},
                "livemode": not self.key.startswith(("sk_test_", "rk_test_")),
                "metadata": {},
            }
        )

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
            product_id = self.new_id("prod")
            self.add({"id": product_id, "object": "product", "name": product, "active": True})
        price = {
            "id": self.new_id("price"),
            "object": "price",
            "active": True,
            "billing_scheme": "per_unit",
            "currency": currency,
            "nickname": nickname,
            "product": product_id,
            "recurring": {
                "interval": interval,
                "interval_count": interval_count,
                "usage_type": "licensed",
                "meter": None,
            },
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
        }
        return {
            "id": self.new_id("si"),
            "object": "subscription_item",
            "price": price,
            "quantity": quantity,
            "discounts": [],
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
        sub_id = self.new_id("sub")
        for item in items:
            item["subscription"] = sub_id
        subscription: JSON = {
            "id": sub_id,
            "object": "subscription",
            "customer": customer_id,
            "status": status,
            "created": self._created(created),
            "currency": items[0]["price"]["currency"] if items else "usd",
            "cancel_at": None,
            "cancel_at_period_end": cancel_at_period_end,
            "canceled_at": None,
            "ended_at": None,
            "default_payment_method": None,
            "default_source": None,
            "discounts": [],
            "pause_collection": None,
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
        return self.add(subscription)

    def add_charge(
        self,
        customer: JSON | str,
        amount: int,
        *,
        currency: str = "usd",
        status: str = "succeeded",
        amount_refunded: int = 0,
        created: int | None = None,
        failure_message: str | None = None,
    ) -> JSON:
        """Add a charge; ``status`` is succeeded, pending or failed."""
        customer_id = customer if isinstance(customer, str) else customer["id"]
        succeeded = status == "succeeded"
        return self.add(
            {
                "id": self.new_id("ch"),
                "object": "charge",
                "customer": customer_id,
                "amount": amount,
                "amount_captured": amount if succeeded else 0,
                "amount_refunded": amount_refunded,
                "captured": succeeded,
                "refunded": amount_refunded >= amount > 0,
                "disputed": False,
                "currency": currency,
                "status": status,
                "paid": succeeded,
                "failure_message": failure_message,
                "created": self._created(created),
            }
        )

    def add_card(
        self,
        customer: JSON,
        *,
        brand: str = "visa",
        last4: str = "4242",
        exp_month: int = 8,
        exp_year: int = 2030,
    ) -> JSON:
        """Add a card PaymentMethod and make it the customer's default for invoices."""
        method = self.add(
            {
                "id": self.new_id("pm"),
                "object": "payment_method",
                "type": "card",
                "customer": customer["id"],
                "card": {
                    "brand": brand,
                    "display_brand": brand,
                    "last4": last4,
                    "exp_month": exp_month,
                    "exp_year": exp_year,
                },
                "created": self._created(None),
            }
        )
        customer["invoice_settings"]["default_payment_method"] = method["id"]
        return method

    def add_invoice(
        self,
        customer: JSON | str,
        amount_due: int,
        *,
        currency: str = "usd",
        status: str = "open",
        created: int | None = None,
        due_date: int | None = None,
    ) -> JSON:
        """Add an invoice (``open`` by default) with its hosted page's URL."""
        customer_id = customer if isinstance(customer, str) else customer["id"]
        invoice_id = self.new_id("in")
        return self.add(
            {
                "id": invoice_id,
                "object": "invoice",
                "customer": customer_id,
                "status": status,
                "amount_due": amount_due,
                "amount_paid": 0,
                "amount_remaining": amount_due if status == "open" else 0,
                "currency": currency,
                "collection_method": "send_invoice" if due_date else "charge_automatically",
                "attempted": due_date is None,
                "attempt_count": 0 if due_date else 1,
                "due_date": due_date,
                "next_payment_attempt": None,
                "hosted_invoice_url": f"https://invoice.stripe.com/i/{invoice_id}",
                "created": self._created(created),
            }
        )

    def seed(self) -> None:
        """Sample customers for the demo and end-to-end tests."""
        ada = self.add_customer("ada@example.com", name="Ada Lovelace", currency="usd")
        self.add_card(ada)
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
        self.add_charge(
            grace,
            297000,
            currency="eur",
            status="failed",
            failure_message="Your card was declined.",
        )
        self.add_invoice(grace, 297000, currency="eur", due_date=BASE_TIME + 1_296_000)
        self.add_customer("alan@example.com", name="Alan Turing", currency="jpy", balance=-500)

    @property
    def total_requests(self) -> int:
        """Requests received on every path."""
        return sum(self.requests.values())

    # --- HTTP -----------------------------------------------------------------------------

    def middlewares(self) -> list[Any]:
        """The middlewares of the app, outermost first (a subclass may add its own)."""
        return [self._count_and_authorize]

    def app(self) -> web.Application:
        """The aiohttp application serving this account."""
        app = web.Application(middlewares=self.middlewares())
        routes = {
            "/v1/customers": self._customers,
            "/v1/customers/{id}": self._retrieve("customer", "customers"),
            "/v1/subscriptions": self._subscriptions,
            "/v1/subscription_items": self._subscription_items,
            "/v1/charges": self._charges,
            "/v1/invoices": self._invoices,
            "/v1/disputes": self._disputes,
            "/v1/products": self._products,
            "/v1/products/{id}": self._retrieve("product", "products"),
            "/v1/prices/{id}": self._retrieve("price", "prices"),
            "/v1/coupons/{id}": self._retrieve("coupon", "coupons"),
        }
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        return app

    @web.middleware
    async def _count_and_authorize(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        self.requests[request.path] += 1
        self.queries.append((request.path, request.query_string))
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return ApiError(401, "Invalid API Key provided: sk_****").response()
        try:
            return await handler(request)
        except ApiError as error:
            return error.response()
        except web.HTTPNotFound:
            return ApiError(404, f"Unrecognized request URL (GET: {request.path}).").response()

    def _lookup(self, value: Any) -> Any:
        found = self.objects.get(value) if isinstance(value, str) else None
        return copy.deepcopy(found) if found is not None else value

    def _expand(self, obj: Any, path: list[str]) -> None:
        if isinstance(obj, list):
            for element in obj:
                self._expand(element, path)
            return
        if not isinstance(obj, dict):
            return
        key, rest = path[0], path[1:]
        includable = key in _INCLUDABLE.get(str(obj.get("object")), set())
        if key not in obj and not includable:
            raise ApiError(400, f"This property cannot be expanded ({key}).")
        if includable and not rest:
            obj[key] = copy.deepcopy(self._tiers.get(obj["id"]))
            return
        value = obj.get(key)
        if isinstance(value, list):
            value = obj[key] = [self._lookup(v) for v in value]
        else:
            value = obj[key] = self._lookup(value)
        if rest:
            self._expand(value, rest)

    def _expanded(self, request: web.Request, obj: JSON) -> JSON:
        obj = copy.deepcopy(obj)
        for path in _expansions(request.query):
            parts = path.split(".")
            if len(parts) > MAX_EXPAND_LEVELS:
                raise ApiError(
                    400,
                    "You cannot expand more than 4 levels of a property. Property: " + path,
                    "property_expansion_max_depth",
                )
            self._expand(obj, parts)
        return obj

    def _page(self, request: web.Request, objects: list[JSON]) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit", "10"))
        except ValueError:
            raise ApiError(400, "Invalid integer: limit") from None
        if not 1 <= limit <= 100:
            raise ApiError(400, "Invalid limit: must be between 1 and 100")
        ordered = sorted(objects, key=lambda o: o["created"], reverse=True)
        after = query.get("starting_after")
        if after:
            ids = [o["id"] for o in ordered]
            if after not in ids:
                raise ApiError(400, f"Invalid starting_after: no such object {after}")
            ordered = ordered[ids.index(after) + 1 :]
        page = self._expanded(request, {"object": "list", "data": ordered[:limit]})
        page |= {"has_more": len(ordered) > limit, "url": request.path}
        return web.json_response(page)

    def _retrieve(self, kind: str, store: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            wanted = request.match_info["id"]
            stored = getattr(self, store)
            found = stored.get(wanted) if isinstance(stored, dict) else None
            if isinstance(stored, list):
                found = next((o for o in stored if o["id"] == wanted), None)
            if found is None:
                raise ApiError(404, f"No such {kind}: '{wanted}'", "resource_missing")
            return web.json_response(self._expanded(request, found))

        return handler

    @staticmethod
    def _matching(objects: list[JSON], request: web.Request, *names: str) -> list[JSON]:
        wanted = {name: request.query[name] for name in names if name in request.query}
        return [o for o in objects if all(o.get(k) == v for k, v in wanted.items())]

    async def _customers(self, request: web.Request) -> web.Response:
        return self._page(request, self._matching(self.customers, request, "email"))

    async def _subscriptions(self, request: web.Request) -> web.Response:
        status = request.query.get("status")
        found = [
            s
            for s in self._matching(self.subscriptions, request, "customer")
            if status == "all" or (s["status"] == status if status else s["status"] in LIVE_DEFAULT)
        ]
        return self._page(request, found)

    async def _subscription_items(self, request: web.Request) -> web.Response:
        wanted = request.query.get("subscription")
        if not wanted:
            raise ApiError(400, "Missing required param: subscription.")
        found = next((s for s in self.subscriptions if s["id"] == wanted), None)
        if found is None:
            raise ApiError(404, f"No such subscription: '{wanted}'", "resource_missing")
        items = [dict(item, created=item.get("created") or 0) for item in found["items"]["data"]]
        return self._page(request, items)

    async def _charges(self, request: web.Request) -> web.Response:
        return self._page(request, self._matching(self.charges, request, "customer"))

    async def _invoices(self, request: web.Request) -> web.Response:
        return self._page(request, self._matching(self.invoices, request, "customer", "status"))

    async def _disputes(self, request: web.Request) -> web.Response:
        found = self._matching(self.disputes, request, "charge", "payment_intent")
        return self._page(request, found)

    async def _products(self, request: web.Request) -> web.Response:
        ids = _array(request.query, "ids")
        found = [p for p in self.products.values() if not ids or p["id"] in ids]
        return self._page(request, [dict(p, created=p.get("created") or 0) for p in found])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port); returns the base URL."""
        self.runner, self.url = await serve(self.app(), host, port)
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
