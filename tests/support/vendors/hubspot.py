"""A HubSpot-shaped server: CRM search for contacts and deals, account details.

Written from HubSpot's references: CRM search (POST /crm/v3/objects/{object}/search,
filterGroups/properties/sorts/limit/after, answers {total, results, paging})
https://developers.hubspot.com/docs/api/crm/search , deal search by
``associations.contact``, the error body {status, message, correlationId, category}
https://developers.hubspot.com/docs/faq/api-error-responses , the rate-limit headers
https://developers.hubspot.com/docs/guides/apps/api-usage/usage-details and account
details (portalId, uiDomain)
https://developers.hubspot.com/docs/api-reference/latest/account/account-information/get-account-details
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.vendors.base import VendorServer

TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
PORTAL_ID = 62515
RATE_HEADERS = {
    "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
    "X-HubSpot-RateLimit-Max": "100",
    "X-HubSpot-RateLimit-Remaining": "99",
}


def rate_limited() -> tuple[dict[str, Any], dict[str, str]]:
    """The 429 body and headers HubSpot sends past the ten-second limit."""
    body = {
        "status": "error",
        "message": "You have reached your ten_secondly_rolling limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": str(uuid.uuid4()),
        "policyName": "TEN_SECONDLY_ROLLING",
    }
    return body, {**RATE_HEADERS, "X-HubSpot-RateLimit-Remaining": "0"}


@dataclass
class FakeHubSpot(VendorServer):
    """Contacts (id -> properties) and deals (id -> properties, contact ids)."""

    contacts: dict[str, dict[str, str]] = field(default_factory=dict)
    deals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def routes(self, app: web.Application) -> None:
        """Search endpoints and account details."""
        app.router.add_post("/crm/v3/objects/contacts/search", self.search_contacts)
        app.router.add_post("/crm/v3/objects/deals/search", self.search_deals)
        app.router.add_get("/account-info/v3/details", self.details)

    def add_contact(self, contact_id: str, **properties: str) -> None:
        """A contact; ``email`` is one of its properties."""
        self.contacts[contact_id] = {"hs_object_id": contact_id, **properties}

    def add_deal(self, deal_id: str, contact_id: str, **properties: str) -> None:
        """A deal associated with one contact."""
        self.deals[deal_id] = {
            "contact": contact_id,
            "properties": {"hs_object_id": deal_id, **properties},
        }

    def _denied(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Bearer {TOKEN}":
            return None
        body = {
            "status": "error",
            "message": "Authentication credentials not found. This API supports OAuth 2.0 "
            "authentication and you can find more details at https://developers.hubspot.com",
            "correlationId": str(uuid.uuid4()),
            "category": "INVALID_AUTHENTICATION",
        }
        return web.json_response(body, status=401)

    @staticmethod
    def _filter(body: dict[str, Any]) -> tuple[str, str, str]:
        only = body["filterGroups"][0]["filters"][0]
        return only["propertyName"], only["operator"], str(only["value"])

    @staticmethod
    def _page(
        body: dict[str, Any], rows: list[dict[str, Any]], sort_default: str
    ) -> dict[str, Any]:
        sorts = body.get("sorts") or [{"propertyName": sort_default, "direction": "DESCENDING"}]
        key = sorts[0]["propertyName"]
        rows.sort(
            key=lambda r: r["properties"].get(key, ""),
            reverse=sorts[0]["direction"] == "DESCENDING",
        )
        limit = int(body.get("limit", 10))
        after = int(body.get("after", 0))
        answer: dict[str, Any] = {"total": len(rows), "results": rows[after : after + limit]}
        if after + limit < len(rows):
            answer["paging"] = {
                "next": {"after": str(after + limit), "link": "?after=" + str(after + limit)}
            }
        return answer

    @staticmethod
    def _object(object_id: str, properties: dict[str, str], wanted: list[str]) -> dict[str, Any]:
        kept = {
            k: v
            for k, v in properties.items()
            if k in wanted or k in ("hs_object_id", "createdate", "lastmodifieddate")
        }
        return {
            "id": object_id,
            "properties": kept,
            "createdAt": properties.get("createdate", "2024-01-01T00:00:00Z"),
            "updatedAt": properties.get("lastmodifieddate", "2024-01-01T00:00:00Z"),
            "archived": False,
        }

    async def search_contacts(self, request: web.Request) -> web.Response:
        """Contacts whose email EQ the value (HubSpot compares emails case-insensitively)."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        body = await request.json()
        name, operator, value = self._filter(body)
        assert (name, operator) == ("email", "EQ"), body
        rows = [
            self._object(cid, props, body.get("properties", []))
            for cid, props in self.contacts.items()
            if props.get("email", "").lower() == value.lower()
        ]
        return web.json_response(self._page(body, rows, "lastmodifieddate"), headers=RATE_HEADERS)

    async def search_deals(self, request: web.Request) -> web.Response:
        """Deals associated with the contact id given as ``associations.contact``."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        body = await request.json()
        name, operator, value = self._filter(body)
        assert (name, operator) == ("associations.contact", "EQ"), body
        rows = [
            self._object(did, deal["properties"], body.get("properties", []))
            for did, deal in self.deals.items()
            if deal["contact"] == value
        ]
        return web.json_response(self._page(body, rows, "createdate"), headers=RATE_HEADERS)

    async def details(self, request: web.Request) -> web.Response:
        """The account's portal id and UI domain."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        return web.json_response(
            {
                "portalId": PORTAL_ID,
                "accountType": "STANDARD",
                "timeZone": "US/Eastern",
                "companyCurrency": "USD",
                "additionalCurrencies": [],
                "utcOffset": "-05:00",
                "utcOffsetMilliseconds": -18000000,
                "uiDomain": "app.hubspot.com",
                "dataHostingLocation": "na1",
            }
        )
