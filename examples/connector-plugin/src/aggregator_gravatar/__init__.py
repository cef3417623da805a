"""A connector type that needs no upstream: avatar URL, domain and free-mail flag of an email."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from pydantic import Field

from aggregator.plugin import Connector, ConnectorSettings

FREE_MAIL = ("gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "yahoo.com", "icloud.com")


class GravatarSettings(ConnectorSettings):
    """The keys of ``type: gravatar``, on top of the ones every connector accepts."""

    size: int = Field(default=80, ge=1, le=2048, description="Avatar size in pixels.")
    default_image: str = Field(
        default="identicon",
        pattern=r"^[a-z0-9]+$",
        description="Gravatar's fallback image when the email has none: identicon, mp, retro...",
    )
    free_mail_domains: tuple[str, ...] = Field(
        default=FREE_MAIL, description="Domains whose addresses count as free mail."
    )


class GravatarConnector(Connector[GravatarSettings]):
    """Derives fields from the email alone, so it never times out and needs no credentials."""

    settings_model = GravatarSettings

    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        """The avatar URL, the domain and whether it is a free-mail address."""
        digest = hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()
        query = urlencode({"s": self.settings.size, "d": self.settings.default_image})
        domain = email.rpartition("@")[2].lower()
        return {
            "avatar_url": f"https://gravatar.com/avatar/{digest}?{query}",
            "domain": domain,
            "free_mail": domain in {d.lower() for d in self.settings.free_mail_domains},
        }

    async def check(self) -> None:
        """Nothing to probe: the settings were validated when the config was loaded."""
