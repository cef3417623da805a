"""``type: intercom``: a contact by email (search API) and its latest conversations.

Calls: ``POST /contacts/search`` (email equal to the normalized address or to the address
as Groove wrote it; a user is preferred over a lead), then ``POST /conversations/search``
on ``contact_ids``, newest first. Timestamps (UNIX seconds) become ISO 8601 UTC.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from connectors.http import Reply, parse_retry_after
from connectors.presets.common import PresetConnector, PresetSettings, from_epoch
from connectors.rest import RestSettings
from connectors.templating import Context

API = "https://api.intercom.io"
CONTACT_FIELDS = {
    "id": "id",
    "role": "role",
    "name": "name",
    "phone": "phone",
    "external_id": "external_id",
    "created_at": "created_at",
    "signed_up_at": "signed_up_at",
    "last_seen_at": "last_seen_at",
    "city": "location.city",
    "country": "location.country",
    "unsubscribed": "unsubscribed_from_emails",
}
CONVERSATION_FIELDS = ("id", "title", "state", "created_at", "updated_at")
TIMESTAMPS = ("created_at", "signed_up_at", "last_seen_at", "updated_at")


class IntercomSettings(PresetSettings):
    """``type: intercom``: an access token of an Intercom app (Developer Hub)."""

    type: Literal["intercom"] = "intercom"
    token: SecretStr = Field(description="Access token of your Intercom app.")
    api_version: str = Field(default="2.11", description="Intercom-Version header.")
    app_url: str = Field(
        default="https://app.intercom.com", description="Intercom web app, for record links."
    )

    @field_validator("app_url")
    @classmethod
    def _check_app_url(cls, value: str) -> str:
        if not value.startswith("https://") or "{" in value:
            raise ValueError("must be an https:// URL")
        return value.rstrip("/")


class IntercomConnector(PresetConnector[IntercomSettings]):
    """Contact fields, a link to the contact, the latest conversations with their count."""

    settings_model = IntercomSettings
    FIELDS: ClassVar[tuple[str, ...]] = (*CONTACT_FIELDS, "url")
    ITEM_LISTS: ClassVar[dict[str, dict[str, None]]] = {
        "conversations": dict.fromkeys(CONVERSATION_FIELDS)
    }

    def rest_settings(self) -> RestSettings:
        """Contact search, then the conversations search step."""
        base = self.base(API)
        by_email = [
            {"field": "email", "operator": "=", "value": "{email}"},
            {"field": "email", "operator": "=", "value": "{email|as_sent}"},
        ]
        items = ", ".join(f"{name}: {name}" for name in CONVERSATION_FIELDS)
        return RestSettings.model_validate(
            {
                "type": "rest",
                "url": base + "/contacts/search",
                "method": "POST",
                "auth": {"bearer": self.settings.token},
                "headers": {"Intercom-Version": self.settings.api_version},
                "body": {
                    "query": {"operator": "OR", "value": by_email},
                    "pagination": {"per_page": 10},
                },
                "select": "(data[?role=='user'] | [0]) || data[0]",
                "fields": CONTACT_FIELDS,
                "link": self.settings.app_url
                + "/a/apps/{workspace_id}/users/{id}/all-conversations",
                "then": {
                    "conversations": {
                        "url": base + "/conversations/search",
                        "method": "POST",
                        "body": {
                            "query": {"field": "contact_ids", "operator": "=", "value": "{id}"},
                            "pagination": {"per_page": 20},
                        },
                        "select": "reverse(sort_by(conversations, &(updated_at || `0`)))"
                        f"[*].{{{items}}}",
                        "max_items": self.settings.max_items,
                        "count": "total_count",
                    }
                },
            }
        )

    async def _finish(self, fields: dict[str, Any], context: Context) -> dict[str, Any]:
        for key in TIMESTAMPS:
            if key in fields:
                fields[key] = from_epoch(fields[key])
        conversations = fields.get("conversations")
        if isinstance(conversations, dict):
            for item in conversations.values():
                if isinstance(item, dict):
                    for key in TIMESTAMPS:
                        if key in item:
                            item[key] = from_epoch(item[key])
        return fields

    def _retry_after(self, reply: Reply) -> float | None:
        """``Retry-After``, else ``X-RateLimit-Reset`` (the UNIX time the window resets)."""
        seconds = parse_retry_after(reply.headers.get("Retry-After"))
        if seconds is not None:
            return seconds
        reset = reply.headers.get("X-RateLimit-Reset", "")
        if reset.isdigit():
            return max(0.0, int(reset) - time.time())
        return None
