"""A Pipedrive-shaped server (API v1): person search, person details, a person's deals.

Written from Pipedrive's references: search persons (GET /v1/persons/search?term=&fields=
&exact_match=, answer {success, data: {items: [{result_score, item}]}, additional_data:
{pagination}}) https://developers.pipedrive.com/docs/api/v1/Persons#searchPersons ;
person details (GET /v1/persons/{id}: open_deals_count, won_deals_count, owner_id{name})
and a person's deals (GET /v1/persons/{id}/deals?status=&sort=&limit=, data may be null)
https://developers.pipedrive.com/docs/api/v1/Persons ; the api_token query parameter
https://pipedrive.readme.io/docs/how-to-find-the-api-token ; rate limiting (429, the
x-ratelimit-limit/-remaining/-reset headers)
https://pipedrive.readme.io/docs/core-api-concepts-rate-limiting
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.vendors.base import VendorServer

TOKEN = "9f1c2b3a4d5e6f708192a3b4c5d6e7f8a9b0c1d2"


def rate_headers(remaining: int = 39) -> dict[str, str]:
    """The per-2-second window headers."""
    return {
        "x-ratelimit-limit": "40",
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": "2",
    }


def pagination(start: int, limit: int, more: bool) -> dict[str, Any]:
    """additional_data.pagination."""
    page: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
    if more:
        page["next_start"] = start + limit
    return {"pagination": page}


@dataclass
class FakePipedrive(VendorServer):
    """Persons with their deals."""

    persons: dict[int, dict[str, Any]] = field(default_factory=dict)
    deals: list[dict[str, Any]] = field(default_factory=list)

    def routes(self, app: web.Application) -> None:
        """Search, details, deals."""
        app.router.add_get("/api/v1/persons/search", self.search)
        app.router.add_get(r"/api/v1/persons/{id:\d+}", self.person)
        app.router.add_get(r"/api/v1/persons/{id:\d+}/deals", self.person_deals)

    def _denied(self, request: web.Request) -> web.Response | None:
        if request.query.get("api_token") == TOKEN:
            return None
        return web.json_response(
            {
                "success": False,
                "error": "unauthorized access",
                "errorCode": 401,
                "error_info": "Please check developers.pipedrive.com for more information about "
                "Pipedrive API.",
            },
            status=401,
        )

    async def search(self, request: web.Request) -> web.Response:
        """Exact (case-insensitive) email matches, as search summaries."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        term = request.query["term"].lower()
        assert request.query.get("fields") == "email" and request.query.get("exact_match") == "true"
        items = [
            {
                "result_score": 1.0,
                "item": {
                    "id": pid,
                    "type": "person",
                    "name": p["name"],
                    "phones": p.get("phones", []),
                    "emails": p["emails"],
                    "visible_to": 3,
                    "owner": {"id": p.get("owner_id", 1)},
                    "organization": p.get("organization"),
                    "custom_fields": [],
                    "notes": [],
                },
            }
            for pid, p in self.persons.items()
            if term in (e.lower() for e in p["emails"])
        ]
        limit = int(request.query.get("limit", 100))
        return web.json_response(
            {
                "success": True,
                "data": {"items": items[:limit]},
                "additional_data": pagination(0, limit, len(items) > limit),
            },
            headers=rate_headers(),
        )

    async def person(self, request: web.Request) -> web.Response:
        """One person's details."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        pid = int(request.match_info["id"])
        p = self.persons.get(pid)
        if p is None:
            return web.json_response(
                {"success": False, "error": "Person not found", "errorCode": 404}, status=404
            )
        open_count = sum(1 for d in self.deals if d["person_id"] == pid and d["status"] == "open")
        won_count = sum(1 for d in self.deals if d["person_id"] == pid and d["status"] == "won")
        return web.json_response(
            {
                "success": True,
                "data": {
                    "id": pid,
                    "name": p["name"],
                    "owner_id": {
                        "id": 1,
                        "name": p.get("owner", "Sam Rivera"),
                        "email": "sam@acme.example",
                    },
                    "org_id": p.get("organization"),
                    "open_deals_count": open_count,
                    "won_deals_count": won_count,
                    "last_activity_date": p.get("last_activity_date"),
                },
            },
            headers=rate_headers(),
        )

    async def person_deals(self, request: web.Request) -> web.Response:
        """The person's deals of one status, sorted as asked ("add_time DESC")."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        pid = int(request.match_info["id"])
        status = request.query.get("status", "all_not_deleted")
        rows = [
            d
            for d in self.deals
            if d["person_id"] == pid and (status == "all_not_deleted" or d["status"] == status)
        ]
        field_name, _, direction = request.query.get("sort", "id ASC").partition(" ")
        rows.sort(key=lambda d: d.get(field_name) or "", reverse=direction.upper() == "DESC")
        limit = int(request.query.get("limit", 100))
        return web.json_response(
            {
                "success": True,
                "data": rows[:limit] or None,
                "additional_data": pagination(0, limit, len(rows) > limit),
            },
            headers=rate_headers(),
        )
