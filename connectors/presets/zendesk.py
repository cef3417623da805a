"""``type: zendesk``: an end user by email and the latest tickets they requested.

Calls: ``GET /api/v2/users/search.json?query=<email>`` (a partial match, narrowed to the
exact address with ``lower()``), then ``GET /api/v2/users/{id}/tickets/requested.json``
(newest update first). Auth: Basic ``{agent email}/token:{API token}``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from connectors.presets.common import PresetConnector, PresetSettings, host_label
from connectors.rest import RestSettings
from connectors.templating import Context

USER_FIELDS = {
    "id": "id",
    "name": "name",
    "role": "role",
    "organization_id": "organization_id",
    "phone": "phone",
    "time_zone": "time_zone",
    "locale": "locale",
    "tags": "tags",
    "created_at": "created_at",
    "last_login_at": "last_login_at",
    "suspended": "suspended",
}
TICKET_FIELDS = ("id", "subject", "status", "priority", "updated_at")


class ZendeskSettings(PresetSettings):
    """``type: zendesk``: an agent's email and an API token (Admin Center > Apps > APIs)."""

    type: Literal["zendesk"] = "zendesk"
    subdomain: str = Field(description="acme for acme.zendesk.com.")
    email: str = Field(min_length=3, description="Email of the agent the API token belongs to.")
    token: SecretStr = Field(description="Zendesk API token.")

    @field_validator("subdomain")
    @classmethod
    def _check_subdomain(cls, value: str) -> str:
        return host_label(value.removesuffix(".zendesk.com"))

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str) -> str:
        if "@" not in value or any(c in value for c in ":\r\n "):
            raise ValueError("must be the agent's email address")
        return value


class ZendeskConnector(PresetConnector[ZendeskSettings]):
    """User fields, a link to the user, the latest requested tickets with their count."""

    settings_model = ZendeskSettings
    FIELDS: ClassVar[tuple[str, ...]] = (*USER_FIELDS, "url")
    ITEM_LISTS: ClassVar[dict[str, dict[str, None]]] = {
        "tickets": {**dict.fromkeys(TICKET_FIELDS), "url": None}
    }

    def _ui(self) -> str:
        return f"https://{self.settings.subdomain}.zendesk.com"

    def rest_settings(self) -> RestSettings:
        """User search, then the requested tickets step."""
        settings = self.settings
        base = self.base(self._ui())
        per_page = max(1, settings.max_items)
        items = ", ".join(f"{name}: {name}" for name in TICKET_FIELDS)
        return RestSettings.model_validate(
            {
                "type": "rest",
                "url": base + "/api/v2/users/search.json?query={email}",
                "auth": {
                    "basic": {"username": f"{settings.email}/token", "password": settings.token}
                },
                "select": "users[?lower(email)=='{email|lower}'] | [0]",
                "fields": USER_FIELDS,
                "link": self._ui() + "/agent/users/{id}",
                "then": {
                    "tickets": {
                        "url": base + "/api/v2/users/{id}/tickets/requested.json"
                        f"?sort_by=updated_at&sort_order=desc&per_page={per_page}",
                        "select": f"tickets[*].{{{items}}}",
                        "max_items": settings.max_items,
                        "count": "count",
                    }
                },
            }
        )

    async def _finish(self, fields: dict[str, Any], context: Context) -> dict[str, Any]:
        tickets = fields.get("tickets")
        if isinstance(tickets, dict):
            for item in tickets.values():
                if isinstance(item, dict) and isinstance(item.get("id"), int):
                    item["url"] = f"{self._ui()}/agent/tickets/{item['id']}"
        return fields
