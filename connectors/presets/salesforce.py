"""``type: salesforce``: a Contact (else an open Lead) by email, over OAuth2 and SOQL.

The token comes from ``{api_base}/services/oauth2/token`` (client credentials flow, or a
refresh token), and its ``instance_url`` is the API host. The email sits in a SOQL string
literal with ``\\`` and ``'`` backslash-escaped, then the whole query is percent-encoded.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from connectors.presets.common import PresetConnector, PresetSettings
from connectors.rest import RestSettings

INSTANCE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.sandbox)?")
VERSION = re.compile(r"v\d{2,3}\.\d")
CONTACT_SOQL = (
    "SELECT Id, Name, Title, Phone, Account.Name, Owner.Name, LastModifiedDate FROM Contact "
    "WHERE Email = '{email|soql}' ORDER BY LastModifiedDate DESC LIMIT 10"
)
LEAD_SOQL = (
    "SELECT Id, Name, Title, Phone, Company, Status, Owner.Name, LastModifiedDate FROM Lead "
    "WHERE Email = '{email|soql}' AND IsConverted = false ORDER BY LastModifiedDate DESC LIMIT 10"
)
RECORD = "records[0]."
FIELDS = {
    "type": RECORD + "attributes.type",
    "id": RECORD + "Id",
    "name": RECORD + "Name",
    "title": RECORD + "Title",
    "phone": RECORD + "Phone",
    "account": RECORD + "Account.Name",
    "company": RECORD + "Company",
    "lead_status": RECORD + "Status",
    "owner": RECORD + "Owner.Name",
    "updated_at": RECORD + "LastModifiedDate",
    "matches": "totalSize",
}


class SalesforceSettings(PresetSettings):
    """``type: salesforce``: an External Client App with the client credentials flow."""

    type: Literal["salesforce"] = "salesforce"
    instance: str | None = Field(
        default=None, description="My Domain name: acme for acme.my.salesforce.com."
    )
    client_id: str = Field(min_length=1, description="Consumer key of the app.")
    client_secret: SecretStr = Field(description="Consumer secret of the app.")
    refresh_token: SecretStr | None = Field(
        default=None, description="Use the refresh token flow instead of client credentials."
    )
    api_version: str = Field(default="v62.0", description="REST API version (vNN.N).")

    @field_validator("instance")
    @classmethod
    def _check_instance(cls, value: str | None) -> str | None:
        if value is not None and not INSTANCE.fullmatch(value.strip().lower()):
            raise ValueError("must be the My Domain name (acme, or acme--uat.sandbox)")
        return None if value is None else value.strip().lower()

    @field_validator("api_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not VERSION.fullmatch(value):
            raise ValueError("must look like v62.0")
        return value

    @model_validator(mode="after")
    def _where(self) -> SalesforceSettings:
        if self.instance is None and self.api_base is None:
            raise ValueError("set instance (your My Domain name) or api_base")
        return self


class SalesforceConnector(PresetConnector[SalesforceSettings]):
    """Contact or Lead fields: account, owner, lead status, and a Lightning link."""

    settings_model = SalesforceSettings
    FIELDS: ClassVar[tuple[str, ...]] = (*FIELDS, "url")

    def _login_base(self) -> str:
        return self.base(f"https://{self.settings.instance}.my.salesforce.com")

    def _oauth2(self) -> dict[str, object]:
        settings = self.settings
        oauth: dict[str, object] = {
            "token_url": self._login_base() + "/services/oauth2/token",
            "client_id": settings.client_id,
            "client_secret": settings.client_secret,
        }
        if settings.refresh_token is not None:
            oauth |= {"grant": "refresh_token", "refresh_token": settings.refresh_token}
        return oauth

    def _query(self, soql: str) -> RestSettings:
        return RestSettings.model_validate(
            {
                "type": "rest",
                "url": f"{{instance_url}}/services/data/{self.settings.api_version}/query?q={soql}",
                "auth": {"oauth2": self._oauth2()},
                "select": "records[0] && @",
                "fields": FIELDS,
                "link": "{instance_url}/lightning/r/{records[0].attributes.type}/"
                "{records[0].Id}/view",
            }
        )

    def rest_settings(self) -> RestSettings:
        """The Contact query."""
        return self._query(CONTACT_SOQL)

    def fallback_settings(self) -> list[RestSettings]:
        """The open Lead query, when no Contact has the email."""
        return [self._query(LEAD_SOQL)]
