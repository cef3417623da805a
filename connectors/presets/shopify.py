"""``type: shopify``: a customer by email over the GraphQL Admin API, with latest orders.

One call: ``POST /admin/api/{version}/graphql.json`` with the search term
``email:"..."`` passed as a GraphQL variable (so the email is data twice over: a JSON
string, and a quoted search term). GraphQL answers errors with HTTP 200 and an
``errors`` list; ``THROTTLED`` is retried after the time the cost bucket needs.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from aggregator.errors import ConnectorError, RetriableError
from connectors.presets.common import (
    PresetConnector,
    PresetSettings,
    as_int,
    display_money,
    host_label,
)
from connectors.rest import RestSettings
from connectors.templating import Context

QUERY = """query CustomerByEmail($query: String!, $orders: Int!) {
  customers(first: 2, query: $query, sortKey: UPDATED_AT, reverse: true) {
    edges { node {
      legacyResourceId displayName email phone createdAt state note tags
      numberOfOrders amountSpent { amount currencyCode }
      orders(first: $orders, sortKey: CREATED_AT, reverse: true) {
        edges { node {
          name createdAt cancelledAt displayFinancialStatus displayFulfillmentStatus
          totalPriceSet { shopMoney { amount currencyCode } }
        } }
      }
    } }
  }
}"""
FIELDS = {
    "id": "legacyResourceId",
    "name": "displayName",
    "phone": "phone",
    "created_at": "createdAt",
    "state": "state",
    "note": "note",
    "tags": "tags",
    "orders_count": "numberOfOrders",
    "total_spent": "amountSpent",
    "orders": "orders.edges[*].node",
}
ORDER_FIELDS = (
    "name",
    "created_at",
    "financial_status",
    "fulfillment_status",
    "cancelled_at",
    "total",
)


class ShopifySettings(PresetSettings):
    """``type: shopify``: an Admin API access token (read_customers, read_orders)."""

    type: Literal["shopify"] = "shopify"
    shop: str = Field(description="The shop's name: acme for acme.myshopify.com.")
    token: SecretStr = Field(description="Admin API access token (shpat_...).")
    api_version: str = Field(default="2024-10", description="GraphQL Admin API version.")

    @field_validator("shop")
    @classmethod
    def _check_shop(cls, value: str) -> str:
        return host_label(value.removesuffix(".myshopify.com"))

    @field_validator("api_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not (len(value) == 7 and value[:4].isdigit() and value[4] == "-"):
            raise ValueError("must look like 2024-10")
        return value


class ShopifyConnector(PresetConnector[ShopifySettings]):
    """Customer fields, orders count, total spent, the latest orders with their status."""

    settings_model = ShopifySettings
    FIELDS: ClassVar[tuple[str, ...]] = (*[f for f in FIELDS if f != "orders"], "url")
    ITEM_LISTS: ClassVar[dict[str, dict[str, None]]] = {"orders": dict.fromkeys(ORDER_FIELDS)}

    def rest_settings(self) -> RestSettings:
        """The one GraphQL call."""
        settings = self.settings
        base = self.base(f"https://{settings.shop}.myshopify.com")
        return RestSettings.model_validate(
            {
                "type": "rest",
                "url": f"{base}/admin/api/{settings.api_version}/graphql.json",
                "method": "POST",
                "auth": {"header": {"name": "X-Shopify-Access-Token", "value": settings.token}},
                "body": {
                    "query": QUERY,
                    "variables": {
                        "query": "email:{email|quoted}",
                        "orders": max(1, settings.max_items),
                    },
                },
                "errors": "errors",
                "select": "data.customers.edges[0].node",
                "fields": FIELDS,
                "link": f"https://admin.shopify.com/store/{settings.shop}/customers/"
                "{legacyResourceId}",
            }
        )

    async def _finish(self, fields: dict[str, Any], context: Context) -> dict[str, Any]:
        count = as_int(fields.get("orders_count"))
        fields["orders_count"] = count
        spent = fields.get("total_spent")
        if isinstance(spent, dict):
            fields["total_spent"] = display_money(spent.get("amount"), spent.get("currencyCode"))
        orders = fields.pop("orders", None)
        kept = orders[: self.settings.max_items] if isinstance(orders, list) else []
        numbered: dict[str, Any] = {str(i): _order(o) for i, o in enumerate(kept)}
        fields["orders"] = {**numbered, "count": count if count is not None else len(kept)}
        return fields

    def _upstream_error(self, document: Any, found: Any) -> ConnectorError:
        """``THROTTLED`` is retriable after the cost bucket refills; the rest is fatal."""
        codes = [
            error.get("extensions", {}).get("code")
            for error in (found if isinstance(found, list) else [])
            if isinstance(error, dict) and isinstance(error.get("extensions"), dict)
        ]
        if "THROTTLED" in codes:
            return RetriableError("Shopify throttled the query", retry_after=_refill(document))
        return super()._upstream_error(document, found)


def _order(node: Any) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {}
    price = (node.get("totalPriceSet") or {}).get("shopMoney") or {}
    return {
        "name": node.get("name"),
        "created_at": node.get("createdAt"),
        "financial_status": node.get("displayFinancialStatus"),
        "fulfillment_status": node.get("displayFulfillmentStatus"),
        "cancelled_at": node.get("cancelledAt"),
        "total": display_money(price.get("amount"), price.get("currencyCode")),
    }


def _refill(document: Any) -> float | None:
    """Seconds until the bucket holds the query's cost, from ``extensions.cost``."""
    try:
        cost = document["extensions"]["cost"]
        status = cost["throttleStatus"]
        missing = float(cost["requestedQueryCost"]) - float(status["currentlyAvailable"])
        return max(0.0, missing / float(status["restoreRate"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
