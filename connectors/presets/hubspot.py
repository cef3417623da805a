"""``type: hubspot``: a contact by email (CRM search API) and its latest deals.

Calls: ``POST /crm/v3/objects/contacts/search`` (email EQ, most recently modified first),
then ``POST /crm/v3/objects/deals/search`` filtered on ``associations.contact`` (newest
first). The record link needs the account's portal id: set ``portal_id``, or the preset
reads ``GET /account-info/v3/details`` once (and its ``uiDomain``, for EU accounts).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from connectors.presets.common import PresetConnector, PresetSettings
from connectors.rest import RestSettings
from connectors.templating import Context

log = logging.getLogger("aggregator.connector.hubspot")

API = "https://api.hubapi.com"
ACCOUNT_RETRY_SECONDS = 600.0
UI_DOMAIN = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)+")
CONTACT_PROPERTIES = {
    "first_name": "firstname",
    "last_name": "lastname",
    "company": "company",
    "job_title": "jobtitle",
    "phone": "phone",
    "lifecycle_stage": "lifecyclestage",
    "lead_status": "hs_lead_status",
    "owner_id": "hubspot_owner_id",
    "created_at": "createdate",
    "updated_at": "lastmodifieddate",
}
DEAL_PROPERTIES = {
    "name": "dealname",
    "stage": "dealstage",
    "amount": "amount",
    "close_date": "closedate",
    "created_at": "createdate",
}


class HubSpotSettings(PresetSettings):
    """``type: hubspot``: a private app token (scopes crm.objects.contacts.read, deals.read)."""

    type: Literal["hubspot"] = "hubspot"
    token: SecretStr = Field(description="Private app access token (pat-...).")
    portal_id: int | None = Field(
        default=None, description="Hub ID for record links; read from the account when unset."
    )
    ui_domain: str = Field(default="app.hubspot.com", description="HubSpot UI host for links.")

    @field_validator("ui_domain")
    @classmethod
    def _check_ui_domain(cls, value: str) -> str:
        if not UI_DOMAIN.fullmatch(value):
            raise ValueError("must be a host name like app.hubspot.com or app-eu1.hubspot.com")
        return value


class HubSpotConnector(PresetConnector[HubSpotSettings]):
    """Contact fields, a link to the record, and the latest deals with their count."""

    settings_model = HubSpotSettings
    FIELDS: ClassVar[tuple[str, ...]] = ("id", *CONTACT_PROPERTIES, "matches", "url")
    ITEM_LISTS: ClassVar[dict[str, dict[str, None]]] = {"deals": dict.fromkeys(DEAL_PROPERTIES)}

    def __init__(self, name: str, settings: HubSpotSettings) -> None:
        super().__init__(name, settings)
        self._portal: tuple[str, int] | None = (
            None if settings.portal_id is None else (settings.ui_domain, settings.portal_id)
        )
        self._portal_lock = asyncio.Lock()
        self._portal_failed_at: float | None = None

    def rest_settings(self) -> RestSettings:
        """Contact search, then the deals search step."""
        base = self.base(API)
        first = "results[0]."
        fields = {"id": first + "id", "matches": "total"}
        fields |= {key: f"{first}properties.{prop}" for key, prop in CONTACT_PROPERTIES.items()}
        deals = ", ".join(f"{key}: properties.{prop}" for key, prop in DEAL_PROPERTIES.items())
        return RestSettings.model_validate(
            {
                "type": "rest",
                "url": base + "/crm/v3/objects/contacts/search",
                "method": "POST",
                "auth": {"bearer": self.settings.token},
                "body": {
                    "filterGroups": [
                        {
                            "filters": [
                                {"propertyName": "email", "operator": "EQ", "value": "{email}"}
                            ]
                        }
                    ],
                    "properties": ["email", *CONTACT_PROPERTIES.values()],
                    "sorts": [{"propertyName": "lastmodifieddate", "direction": "DESCENDING"}],
                    "limit": 10,
                },
                "select": "results[0] && @",
                "fields": fields,
                "then": {
                    "deals": {
                        "url": base + "/crm/v3/objects/deals/search",
                        "method": "POST",
                        "body": {
                            "filterGroups": [
                                {
                                    "filters": [
                                        {
                                            "propertyName": "associations.contact",
                                            "operator": "EQ",
                                            "value": "{results[0].id}",
                                        }
                                    ]
                                }
                            ],
                            "properties": list(DEAL_PROPERTIES.values()),
                            "sorts": [{"propertyName": "createdate", "direction": "DESCENDING"}],
                            "limit": max(1, self.settings.max_items),
                        },
                        "select": f"results[*].{{{deals}}}",
                        "max_items": self.settings.max_items,
                        "count": "total",
                    }
                },
            }
        )

    async def _finish(self, fields: dict[str, Any], context: Context) -> dict[str, Any]:
        portal = await self._portal_info()
        if portal is not None and fields.get("id") is not None:
            ui_domain, portal_id = portal
            fields["url"] = f"https://{ui_domain}/contacts/{portal_id}/record/0-1/{fields['id']}"
        return fields

    async def _portal_info(self) -> tuple[str, int] | None:
        """The UI domain and portal id, read once from the account (retried after a while)."""
        if self._portal is not None:
            return self._portal
        loop = asyncio.get_running_loop()
        failed = self._portal_failed_at
        if failed is not None and loop.time() - failed < ACCOUNT_RETRY_SECONDS:
            return None
        async with self._portal_lock:
            if self._portal is None:
                try:
                    details = await self._get_json(self.base(API) + "/account-info/v3/details")
                except Exception as exc:
                    self._portal_failed_at = loop.time()
                    log.warning(
                        "hubspot connector %s: no record links: account details unavailable "
                        "(%s); set portal_id",
                        self.name,
                        type(exc).__name__,
                    )
                    return None
                portal_id = details.get("portalId") if isinstance(details, dict) else None
                ui_domain = details.get("uiDomain") if isinstance(details, dict) else None
                if isinstance(portal_id, int) and not isinstance(portal_id, bool):
                    domain = ui_domain if isinstance(ui_domain, str) else None
                    if domain is not None and not UI_DOMAIN.fullmatch(domain):
                        domain = None
                    self._portal = (domain or self.settings.ui_domain, portal_id)
            return self._portal
