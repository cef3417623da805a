"""What Stripe cannot expand in a list, looked up once and kept: names, tiers, coupons.

Stripe caps expansion at four levels, ``data`` included
(https://docs.stripe.com/api/expanding_objects): from a subscription list, a price's
product (``data.items.data.price.product``), its ``tiers`` (listed only on request) and an
item discount's coupon are out of reach. They rarely change, so the process keeps them for
``catalog_ttl`` seconds and asks Stripe only for what it does not hold.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from connectors.stripe_fields import JSON

T = TypeVar("T")
PAGE = 100


class Lookup(Protocol):
    """Makes one Stripe call for the catalog; None when Stripe has no answer for it."""

    async def __call__(self, endpoint: str, make: Callable[[], Awaitable[T]]) -> T | None: ...


class Catalog:
    """What rarely changes and Stripe cannot expand in a list: product names, tiers, coupons."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any:
        """The value kept for ``key``, or None when missing or older than ``ttl``."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.ttl:
            return None
        return entry[1]

    def put(self, key: str, value: Any) -> None:
        """Keep ``value`` for ``key``; the oldest entry goes when full."""
        self._entries.pop(key, None)
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (time.monotonic(), value)

    async def complete(
        self, subs: list[JSON], current: list[JSON], lookup: Lookup, v1: Any
    ) -> None:
        """Fill ``subs`` in place: product names of prices without a nickname, and for the
        ``current`` (not ended) ones, tiers of tiered prices and coupons of item discounts."""
        products = sorted(p for p in _unnamed_products(subs) if self.get(f"product:{p}") is None)
        await asyncio.gather(
            *(
                self._products(products[i : i + PAGE], lookup, v1)
                for i in range(0, len(products), PAGE)
            ),
            *(
                self._tiers(p, lookup, v1)
                for p in _untiered_prices(current)
                if self.get(f"tiers:{p}") is None
            ),
            *(
                self._coupon(c, lookup, v1)
                for c in _unexpanded_coupons(current)
                if self.get(f"coupon:{c}") is None
            ),
        )
        _stitch(subs, current, self)

    async def _products(self, ids: list[str], lookup: Lookup, v1: Any) -> None:
        params = {"ids": ids, "limit": PAGE}
        page = await lookup(
            "products.list", functools.partial(v1.products.list_async, params=params)
        )
        names = {str(p.id): p.to_dict().get("name") or "" for p in page.data} if page else {}
        for product_id in ids:
            self.put(f"product:{product_id}", names.get(product_id, ""))

    async def _tiers(self, price_id: str, lookup: Lookup, v1: Any) -> None:
        params = {"expand": ["tiers"]}
        price = await lookup(
            "prices.retrieve", functools.partial(v1.prices.retrieve_async, price_id, params=params)
        )
        if price is not None:
            self.put(f"tiers:{price_id}", price.to_dict().get("tiers"))

    async def _coupon(self, coupon_id: str, lookup: Lookup, v1: Any) -> None:
        coupon = await lookup(
            "coupons.retrieve", functools.partial(v1.coupons.retrieve_async, coupon_id)
        )
        if coupon is not None:
            self.put(f"coupon:{coupon_id}", coupon.to_dict())


def _items(subscription: Mapping[str, Any]) -> list[JSON]:
    items: list[JSON] = (subscription.get("items") or {}).get("data") or []
    return items


def _discounts(subscription: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The subscription's own discounts and its items', expanded."""
    found = [*(subscription.get("discounts") or [])]
    found += [d for item in _items(subscription) for d in item.get("discounts") or []]
    return [d for d in found if isinstance(d, Mapping)]


def _unnamed_products(subs: list[JSON]) -> set[str]:
    """Product ids of prices without a nickname (the product names the item)."""
    prices = [item.get("price") or {} for s in subs for item in _items(s)]
    return {
        str(p["product"])
        for p in prices
        if isinstance(p.get("product"), str) and not p.get("nickname")
    }


def _untiered_prices(current: list[JSON]) -> set[str]:
    """Ids of tiered prices whose tiers did not come with the subscription (they never do)."""
    prices = [item.get("price") or {} for s in current for item in _items(s)]
    return {
        str(p["id"])
        for p in prices
        if p.get("billing_scheme") == "tiered" and not isinstance(p.get("tiers"), list)
    }


def _unexpanded_coupons(current: list[JSON]) -> set[str]:
    """Coupon ids of discounts whose coupon Stripe could not expand (items' discounts)."""
    sources = [d.get("source") or {} for s in current for d in _discounts(s)]
    return {str(source["coupon"]) for source in sources if isinstance(source.get("coupon"), str)}


def _stitch(subs: list[JSON], current: list[JSON], catalog: Catalog) -> None:
    """Put what the catalog knows where Stripe would have put it, expanded."""
    for price in (item.get("price") or {} for s in subs for item in _items(s)):
        product = price.get("product")
        name = catalog.get(f"product:{product}") if isinstance(product, str) else None
        if name:
            price["product"] = {"id": product, "object": "product", "name": name}
        if price.get("billing_scheme") == "tiered" and not isinstance(price.get("tiers"), list):
            price["tiers"] = catalog.get(f"tiers:{price.get('id')}")
    for s in current:
        for discount in _discounts(s):
            source = discount.get("source")
            if isinstance(source, dict) and isinstance(source.get("coupon"), str):
                source["coupon"] = catalog.get(f"coupon:{source['coupon']}") or source["coupon"]
