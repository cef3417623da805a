"""A Zendesk-shaped server: user search and the tickets a user requested.

Written from Zendesk's references: search users (GET /api/v2/users/search.json?query=,
a partial match; answer {users, next_page, previous_page, count})
https://developers.qodex.ai/integration-flows/zendesk-support-api/api-v2-users-5/search-users-14 ;
requested tickets (GET /api/v2/users/{id}/tickets/requested, offset pagination with
sort_by/sort_order/per_page; answer {tickets, next_page, previous_page, count})
https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#list-tickets ;
API token auth (Basic ``{email}/token:{api_token}``; 401 {"error": "Couldn't
authenticate you"}) https://developer.zendesk.com/api-reference/introduction/security-and-auth/ ;
rate limits (429 with Retry-After; X-Rate-Limit, ratelimit-remaining headers)
https://developer.zendesk.com/api-reference/introduction/rate-limits
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.vendors.base import VendorServer

AGENT = "agent@acme.example"
TOKEN = "6wiIBWbGkBMo1mRDMuVwkw1EPsNkeUj95PIz2akv"
RATE_HEADERS = {"X-Rate-Limit": "700", "X-Rate-Limit-Remaining": "699", "ratelimit-reset": "41"}


@dataclass
class FakeZendesk(VendorServer):
    """Users and tickets by requester."""

    users: list[dict[str, Any]] = field(default_factory=list)
    tickets: list[dict[str, Any]] = field(default_factory=list)

    def routes(self, app: web.Application) -> None:
        """User search and requested tickets."""
        app.router.add_get("/api/v2/users/search.json", self.search_users)
        app.router.add_get(r"/api/v2/users/{id:\d+}/tickets/requested.json", self.requested)

    def _denied(self, request: web.Request) -> web.Response | None:
        expected = base64.b64encode(f"{AGENT}/token:{TOKEN}".encode()).decode()
        if request.headers.get("Authorization") == f"Basic {expected}":
            return None
        return web.json_response({"error": "Couldn't authenticate you"}, status=401)

    async def search_users(self, request: web.Request) -> web.Response:
        """Users whose email or name contains the query (case-insensitive)."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        term = request.query.get("query", "").lower()
        found = [
            u
            for u in self.users
            if term and (term in u.get("email", "").lower() or term in u.get("name", "").lower())
        ]
        return web.json_response(
            {"users": found, "next_page": None, "previous_page": None, "count": len(found)},
            headers=RATE_HEADERS,
        )

    async def requested(self, request: web.Request) -> web.Response:
        """One page of the user's requested tickets, sorted as asked."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        user_id = int(request.match_info["id"])
        rows = [t for t in self.tickets if t["requester_id"] == user_id]
        key = request.query.get("sort_by", "id")
        rows.sort(key=lambda t: t.get(key) or "", reverse=request.query.get("sort_order") == "desc")
        per_page = int(request.query.get("per_page", 100))
        page = rows[:per_page]
        next_page = (
            f"{self.url}/api/v2/users/{user_id}/tickets/requested.json?page=2&per_page={per_page}"
            if len(rows) > per_page
            else None
        )
        return web.json_response(
            {"tickets": page, "next_page": next_page, "previous_page": None, "count": len(rows)},
            headers=RATE_HEADERS,
        )
