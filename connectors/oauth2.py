"""OAuth2 access tokens for the rest machinery: fetched once, shared, refreshed before expiry.

A ``TokenSource`` asks the token endpoint (``client_credentials`` or ``refresh_token``
grant, client credentials in the form body) and keeps the answer until shortly before
``expires_in``. Concurrent callers share one request; a failed request is not cached. The
token, the client secret and the refresh token never appear in a message or a log line.
A token answer's ``instance_url`` (Salesforce's API host) is kept with the token.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import aiohttp
import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from yarl import URL

from aggregator.errors import FatalError, RetriableError
from connectors.http import exchange, parse_retry_after

DEFAULT_LIFETIME = 3600.0
"""Seconds a token is kept when its answer has no ``expires_in`` (Salesforce's has none)."""
REFRESH_MARGIN = 60.0
"""A token is replaced this long before it expires (or at 90% of a shorter lifetime)."""
MAX_TOKEN_ANSWER = 65_536
TOKEN_REQUEST_TIMEOUT = 10.0
"""Seconds one token request may take (callers waiting on it have their own deadlines)."""
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


def _not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


class OAuth2Settings(BaseModel):
    """``auth.oauth2``: where and how to get an access token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_url: str = Field(description="http(s) URL of the token endpoint.")
    client_id: str = Field(min_length=1, description="The app's client id.")
    client_secret: Annotated[SecretStr, AfterValidator(_not_empty)] = Field(
        description="The app's client secret."
    )
    grant: Literal["client_credentials", "refresh_token"] = Field(
        default="client_credentials", description="OAuth2 grant type."
    )
    refresh_token: SecretStr | None = Field(
        default=None, description="Required with grant: refresh_token."
    )
    scope: str | None = Field(default=None, description="Scope to ask for (space-separated).")

    @field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str) -> str:
        parsed = URL(value)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("token_url must be an http:// or https:// URL with a host")
        return value

    @model_validator(mode="after")
    def _refresh_token_with_its_grant(self) -> OAuth2Settings:
        has_token = self.refresh_token is not None and self.refresh_token.get_secret_value()
        if self.grant == "refresh_token" and not has_token:
            raise ValueError("grant: refresh_token needs a refresh_token")
        return self


@dataclass(frozen=True, slots=True)
class Token:
    """An access token, when it stops being used, and the API host it names (if any)."""

    access_token: str = ""
    use_until: float = 0.0
    instance_url: str | None = None

    def __repr__(self) -> str:
        return f"Token(use_until={self.use_until}, instance_url={self.instance_url!r})"


class TokenSource:
    """Hands out a valid token; one token request at a time, shared by every caller."""

    def __init__(
        self, settings: OAuth2Settings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.requests = 0
        self._token: Token | None = None
        self._pending: asyncio.Future[Token] | None = None
        self._refresh_token = settings.refresh_token

    async def get(self, session: aiohttp.ClientSession) -> Token:
        """A token valid now: the kept one, the one being fetched, or a new one."""
        token = self._token
        if token is not None and self.clock() < token.use_until:
            return token
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._fetch_in_time(session))
            self._pending.add_done_callback(self._settle)
        return await asyncio.shield(self._pending)

    def invalidate(self, token: Token) -> None:
        """Drop ``token`` (the upstream refused it) unless a newer one replaced it already."""
        if self._token is token:
            self._token = None

    def _settle(self, future: asyncio.Future[Token]) -> None:
        self._pending = None
        if not future.cancelled() and future.exception() is None:
            self._token = future.result()

    async def _fetch_in_time(self, session: aiohttp.ClientSession) -> Token:
        try:
            async with asyncio.timeout(TOKEN_REQUEST_TIMEOUT):
                return await self._fetch(session)
        except TimeoutError:
            raise RetriableError("OAuth token request timed out") from None

    async def _fetch(self, session: aiohttp.ClientSession) -> Token:
        self.requests += 1
        settings = self.settings
        form: dict[str, str] = {
            "grant_type": settings.grant,
            "client_id": settings.client_id,
            "client_secret": settings.client_secret.get_secret_value(),
        }
        if settings.grant == "refresh_token" and self._refresh_token is not None:
            form["refresh_token"] = self._refresh_token.get_secret_value()
        if settings.scope:
            form["scope"] = settings.scope
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        reply = await exchange(
            session,
            "POST",
            URL(settings.token_url),
            headers=headers,
            body=urlencode(form).encode(),
            max_body_bytes=MAX_TOKEN_ANSWER,
            read_body=True,
        )
        answer = _json_object(reply.body)
        if reply.status == 429 or reply.status >= 500:
            raise RetriableError(
                f"OAuth token request failed: HTTP {reply.status}",
                retry_after=parse_retry_after(reply.headers.get("Retry-After")),
            )
        if not 200 <= reply.status < 300:
            code = answer.get("error")
            reason = f" ({code})" if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""
            raise FatalError(f"OAuth token request refused: HTTP {reply.status}{reason}")
        return self._token_from(answer)

    def _token_from(self, answer: dict[str, Any]) -> Token:
        access = answer.get("access_token")
        if not isinstance(access, str) or not access:
            raise FatalError("OAuth token answer has no access_token")
        lifetime = answer.get("expires_in")
        seconds = (
            float(lifetime)
            if isinstance(lifetime, int | float) and not isinstance(lifetime, bool)
            else DEFAULT_LIFETIME
        )
        seconds = max(0.0, seconds)
        keep = seconds - min(REFRESH_MARGIN, seconds / 10)
        rotated = answer.get("refresh_token")
        if isinstance(rotated, str) and rotated:
            self._refresh_token = SecretStr(rotated)
        return Token(access, self.clock() + keep, self._instance_url(answer.get("instance_url")))

    def _instance_url(self, value: Any) -> str | None:
        if value is None:
            return None
        parsed = URL(value) if isinstance(value, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise FatalError("OAuth token answer has an unusable instance_url")
        if URL(self.settings.token_url).scheme == "https" and parsed.scheme != "https":
            raise FatalError("OAuth token answer's instance_url is not https")
        return str(parsed.origin())


def _json_object(body: bytes | None) -> dict[str, Any]:
    try:
        value = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
