"""``type: pipedrive``: a person by email, their owner and deal counts, their open deals.

Calls: ``GET /persons/search?term=<email>&fields=email&exact_match=true``, then, at once,
``GET /persons/{id}`` (owner, open/won deal counts) and
``GET /persons/{id}/deals?status=open`` (newest first). Auth: the ``api_token`` query
parameter. Deal values are shown as money.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from connectors.http import Reply, parse_retry_after
from connectors.presets.common import (
    PresetConnector,
    PresetSettings,
    as_int,
    host_label,
)
from connectors.rest import RestSettings
from connectors.templating import Context

PERSON_FIELDS = {
    "id": "id",
    "name": "name",
    "organization": "organization.name",
    "phones": "phones",
}
DETAIL_FIELDS = {
    "owner": "owner_id.name",
    "open_deals_count": "open_deals_count",
    "won_deals_count": "won_deals_count",
    "last_activity_date": "last_activity_date",
}
DEAL_FIELDS = ("title", "value", "stage_id", "add_time")


class PipedriveSettings(PresetSettings):
    """``type: pipedrive``: a personal API token (Personal preferences > API)."""

    type: Literal["pipedrive"] = "pipedrive"
    company_domain: str = Field(description="acme for acme.pipedrive.com.")
    token: SecretStr = Field(description="Personal API token.")

    @field_validator("company_domain")
    @classmethod
    def _check_domain(cls, value: str) -> str:
        return host_label(value.removesuffix(".pipedrive.com"))


class PipedriveConnector(PresetConnector[PipedriveSettings]):
    """Person fields, a link to the person, owner, deal counts, the open deals."""

    settings_model = PipedriveSettings
    FIELDS: ClassVar[tuple[str, ...]] = (*PERSON_FIELDS, *DETAIL_FIELDS, "url")
    ITEM_LISTS: ClassVar[dict[str, dict[str, None]]] = {"deals": dict.fromkeys(DEAL_FIELDS)}

    def rest_settings(self) -> RestSettings:
        """Person search, then the person's details and open deals."""
        settings = self.settings
        ui = f"https://{settings.company_domain}.pipedrive.com"
        base = self.base(ui + "/api/v1")
        limit = max(1, settings.max_items)
        return RestSettings.model_validate(
            {
                "type": "rest",
                "url": base + "/persons/search?term={email}&fields=email&exact_match=true&limit=10",
                "auth": {"query": {"name": "api_token", "value": settings.token}},
                "select": "data.items[0].item",
                "fields": PERSON_FIELDS,
                "link": ui + "/person/{id}",
                "then": {
                    "person": {
                        "url": base + "/persons/{id}",
                        "select": "data",
                        "fields": DETAIL_FIELDS,
                    },
                    "deals": {
                        "url": base + "/persons/{id}/deals?status=open&sort=add_time DESC"
                        f"&limit={limit}",
                        "select": "(data || `[]`)[*].{title: title, value: value, "
                        "currency: currency, stage_id: stage_id, add_time: add_time}",
                        "max_items": settings.max_items,
                        "formats": {"value": "money:@currency"},
                    },
                },
            }
        )

    async def _finish(self, fields: dict[str, Any], context: Context) -> dict[str, Any]:
        details = fields.pop("person", None)
        if isinstance(details, dict):
            fields.update(details)
        deals = fields.get("deals")
        if isinstance(deals, dict):
            for item in deals.values():
                if isinstance(item, dict):
                    item.pop("currency", None)  # shown in the value (the step's formats)
            open_count = as_int(fields.get("open_deals_count"))
            if open_count is not None:
                deals["count"] = open_count
        return fields

    def _retry_after(self, reply: Reply) -> float | None:
        """``Retry-After``, else ``x-ratelimit-reset`` (seconds left in the window)."""
        seconds = parse_retry_after(reply.headers.get("Retry-After"))
        if seconds is not None:
            return seconds
        return parse_retry_after(reply.headers.get("x-ratelimit-reset"))
