"""An Intercom-shaped server: contact search and conversation search.

Written from Intercom's references: search contacts (POST /contacts/search, a ``query``
of single filters {field, operator, value} or nested {operator: AND|OR, value: [...]},
``pagination.per_page``, answer {type: list, data, total_count, pages})
https://developers.intercom.com/docs/references/2.7/rest-api/api.intercom.io/Contacts/SearchContacts/
pagination for search APIs (pages.next.starting_after)
https://developers.intercom.com/docs/build-an-integration/learn-more/rest-apis/pagination/
error objects ({type: error.list, request_id, errors: [{code, message}]})
https://developers.intercom.com/docs/references/2.17/rest-api/errors/error-objects
rate limiting (429 with X-RateLimit-Limit/-Remaining/-Reset, reset as a UNIX time)
https://developers.intercom.com/docs/references/rest-api/errors/rate-limiting.md
The ``Intercom-Version`` header is required here as it selects the API version there.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.vendors.base import VendorServer

TOKEN = "dG9rOjEyMzQ1Njc4OjEyMzQ="
WORKSPACE = "ja43hiec"


def error_list(code: str, message: str) -> dict[str, Any]:
    """Intercom's error body."""
    return {
        "type": "error.list",
        "request_id": str(uuid.uuid4()),
        "errors": [{"code": code, "message": message}],
    }


def rate_headers(remaining: int, reset_in: int = 10) -> dict[str, str]:
    """The X-RateLimit-* headers; the reset is a UNIX timestamp."""
    return {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(time.time()) + reset_in),
    }


def _matches(query: dict[str, Any], item: dict[str, Any]) -> bool:
    if query.get("operator") in ("AND", "OR"):
        results = [_matches(q, item) for q in query["value"]]
        return all(results) if query["operator"] == "AND" else any(results)
    value = item.get(query["field"])
    if query["operator"] == "=":
        return value == query["value"] if not isinstance(value, list) else query["value"] in value
    if query["operator"] == "~":
        return isinstance(value, str) and query["value"] in value
    raise ValueError(query["operator"])


@dataclass
class FakeIntercom(VendorServer):
    """Contacts (as stored: Intercom keeps an email as it was written) and conversations."""

    contacts: list[dict[str, Any]] = field(default_factory=list)
    conversations: list[dict[str, Any]] = field(default_factory=list)

    def routes(self, app: web.Application) -> None:
        """The two search endpoints."""
        app.router.add_post("/contacts/search", self.search_contacts)
        app.router.add_post("/conversations/search", self.search_conversations)

    def add_contact(self, contact_id: str, email: str, **values: Any) -> None:
        """A contact (role user unless given)."""
        self.contacts.append(
            {
                "type": "contact",
                "id": contact_id,
                "workspace_id": WORKSPACE,
                "role": "user",
                "email": email,
                **values,
            }
        )

    def add_conversation(self, conversation_id: str, contact_id: str, **values: Any) -> None:
        """A conversation with one contact."""
        self.conversations.append(
            {
                "type": "conversation",
                "id": conversation_id,
                "contact_ids": [contact_id],
                "contacts": {
                    "type": "contact.list",
                    "contacts": [{"type": "contact", "id": contact_id}],
                },
                **values,
            }
        )

    def _denied(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response(error_list("unauthorized", "Access Token Invalid"), status=401)
        if "Intercom-Version" not in request.headers:
            return web.json_response(error_list("intercom_version_invalid", "missing"), status=400)
        return None

    @staticmethod
    def _page(
        items: list[dict[str, Any]], body: dict[str, Any], list_type: str, key: str
    ) -> dict[str, Any]:
        per_page = int(body.get("pagination", {}).get("per_page", 50))
        shown = items[:per_page]
        pages: dict[str, Any] = {
            "type": "pages",
            "page": 1,
            "per_page": per_page,
            "total_pages": max(1, -(-len(items) // per_page)),
        }
        if len(items) > per_page:
            pages["next"] = {"page": 2, "starting_after": "WzE3MTcxNzE3MTcwMDAsMV0="}
        return {"type": list_type, key: shown, "total_count": len(items), "pages": pages}

    async def search_contacts(self, request: web.Request) -> web.Response:
        """Contacts matching the query."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        body = await request.json()
        found = [c for c in self.contacts if _matches(body["query"], c)]
        return web.json_response(self._page(found, body, "list", "data"), headers=rate_headers(999))

    async def search_conversations(self, request: web.Request) -> web.Response:
        """Conversations matching the query, in the order they were created."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        body = await request.json()
        found = [c for c in self.conversations if _matches(body["query"], c)]
        return web.json_response(
            self._page(found, body, "conversation.list", "conversations"), headers=rate_headers(998)
        )
