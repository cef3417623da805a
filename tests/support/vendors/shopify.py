"""A Shopify-shaped server: the GraphQL Admin API's customers query.

Written from Shopify's references: the GraphQL Admin endpoint
(POST /admin/api/{version}/graphql.json, ``X-Shopify-Access-Token``, {query, variables})
https://shopify.dev/docs/api/admin-graphql ; the Customer object (legacyResourceId,
displayName, numberOfOrders as an UnsignedInt64 string, amountSpent MoneyV2, orders)
https://shopify.dev/docs/api/admin-graphql/2024-10/objects/Customer ; the search syntax
(``email:"..."``, quoted values, backslash escapes)
https://shopify.dev/docs/api/usage/search-syntax ; response codes (401 with
``{"errors": "[API] Invalid API key or access token ..."}``)
https://shopify.dev/docs/api/usage/response-codes ; rate limits (calculated query cost,
``THROTTLED`` errors with extensions.cost.throttleStatus)
https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits
It does not execute GraphQL: it checks the query asks for customers, reads the variables
and answers in the shape the preset's query selects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.vendors.base import VendorServer

TOKEN = "shpat_0123456789abcdef0123456789abcdef"
VERSION = "2024-10"


def cost(available: float = 990.0, requested: int = 12) -> dict[str, Any]:
    """The ``extensions.cost`` block every answer carries."""
    return {
        "cost": {
            "requestedQueryCost": requested,
            "actualQueryCost": None if available < requested else requested,
            "throttleStatus": {
                "maximumAvailable": 1000.0,
                "currentlyAvailable": available,
                "restoreRate": 50.0,
            },
        }
    }


def throttled(available: float = 0.0, requested: int = 12) -> dict[str, Any]:
    """A THROTTLED answer (HTTP 200): errors and the cost bucket, no data."""
    return {
        "errors": [
            {
                "message": "Throttled",
                "extensions": {
                    "code": "THROTTLED",
                    "documentation": "https://shopify.dev/api/usage/rate-limits",
                },
            }
        ],
        "extensions": cost(available, requested),
    }


def parse_email_term(term: str) -> str | None:
    """The value of ``email:"..."`` (backslash escapes undone); None when malformed."""
    if not term.startswith('email:"') or not term.endswith('"') or len(term) < 9:
        return None
    inner, out, escaped = term[7:-1], [], False
    for char in inner:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return None  # a bare quote would end the term early
        else:
            out.append(char)
    return None if escaped else "".join(out)


@dataclass
class FakeShopify(VendorServer):
    """Customers (as the preset's query selects them) with their orders."""

    customers: list[dict[str, Any]] = field(default_factory=list)

    def routes(self, app: web.Application) -> None:
        """The GraphQL endpoint of one API version."""
        app.router.add_post(f"/admin/api/{VERSION}/graphql.json", self.graphql)

    def add_customer(
        self, legacy_id: int, email: str, orders: list[dict[str, Any]], **values: Any
    ) -> None:
        """A customer and its orders (newest last; the query asks for them newest first)."""
        self.customers.append({"legacy": legacy_id, "email": email, "orders": orders, **values})

    async def graphql(self, request: web.Request) -> web.Response:
        """Answer the customers query."""
        if request.headers.get("X-Shopify-Access-Token") != TOKEN:
            return web.json_response(
                {
                    "errors": "[API] Invalid API key or access token "
                    "(unrecognized login or wrong password)"
                },
                status=401,
            )
        body = await request.json()
        query, variables = body.get("query", ""), body.get("variables", {})
        if "customers(" not in query or "$query: String!" not in query:
            return web.json_response(
                {"errors": [{"message": "Parse error", "extensions": {"code": "PARSE_ERROR"}}]}
            )
        email = parse_email_term(variables.get("query", ""))
        if email is None:
            return web.json_response(
                {
                    "errors": [
                        {
                            "message": "Invalid search query",
                            "extensions": {"code": "INVALID_SEARCH_QUERY"},
                        }
                    ]
                }
            )
        found = [c for c in self.customers if c["email"].lower() == email.lower()]
        found.sort(key=lambda c: c.get("updatedAt", ""), reverse=True)
        edges = [{"node": self._node(c, int(variables.get("orders", 10)))} for c in found[:2]]
        return web.json_response({"data": {"customers": {"edges": edges}}, "extensions": cost()})

    @staticmethod
    def _node(customer: dict[str, Any], first: int) -> dict[str, Any]:
        orders = list(reversed(customer["orders"]))[:first]
        return {
            "legacyResourceId": str(customer["legacy"]),
            "displayName": customer.get("displayName"),
            "email": customer["email"],
            "phone": customer.get("phone"),
            "createdAt": customer.get("createdAt", "2023-01-01T00:00:00Z"),
            "state": customer.get("state", "ENABLED"),
            "note": customer.get("note"),
            "tags": customer.get("tags", []),
            "numberOfOrders": str(len(customer["orders"])),
            "amountSpent": customer.get("amountSpent", {"amount": "0.0", "currencyCode": "USD"}),
            "orders": {
                "edges": [
                    {
                        "node": {
                            "name": o["name"],
                            "createdAt": o["createdAt"],
                            "cancelledAt": o.get("cancelledAt"),
                            "displayFinancialStatus": o.get("financial", "PAID"),
                            "displayFulfillmentStatus": o.get("fulfillment", "FULFILLED"),
                            "totalPriceSet": {
                                "shopMoney": {"amount": o["total"], "currencyCode": "USD"}
                            },
                        }
                    }
                    for o in orders
                ]
            },
        }
