"""``auth`` of a rest connector: exactly one of bearer, basic, header, query or oauth2."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import quote

import aiohttp
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator
from yarl import URL

from connectors.oauth2 import OAuth2Settings, Token, TokenSource

_FROZEN = ConfigDict(extra="forbid", frozen=True)


def _not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


def _header_name(value: str) -> str:
    if not value or any(c in value for c in "\r\n: \t"):
        raise ValueError("must be a header name (no spaces, ':' or line breaks)")
    return value


Secret = Annotated[SecretStr, AfterValidator(_not_empty)]


class BasicAuth(BaseModel):
    """``auth.basic``: HTTP Basic credentials."""

    model_config = _FROZEN

    username: str = Field(min_length=1, description="User name (Zendesk: agent@x.com/token).")
    password: Secret = Field(description="Password or API key.")


class NamedSecret(BaseModel):
    """``auth.header`` / ``auth.query``: a secret sent under a name."""

    model_config = _FROZEN

    name: Annotated[str, AfterValidator(_header_name)] = Field(description="Header or query name.")
    value: Secret = Field(description="The secret value.")


class RestAuth(BaseModel):
    """How a rest connector proves who it is; set exactly one key."""

    model_config = _FROZEN

    bearer: Secret | None = Field(
        default=None, description="A token sent as Authorization: Bearer <token>."
    )
    basic: BasicAuth | None = Field(default=None, description="HTTP Basic username/password.")
    header: NamedSecret | None = Field(default=None, description="A header {name, value}.")
    query: NamedSecret | None = Field(
        default=None, description="A query parameter {name, value} added to every URL."
    )
    oauth2: OAuth2Settings | None = Field(
        default=None, description="Client credentials or refresh token; the token is cached."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> RestAuth:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError("set exactly one of bearer, basic, header, query, oauth2")
        return self

    @property
    def kind(self) -> str:
        """Which of the five this is (for messages)."""
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one request carries: headers, a query parameter, the token used (if OAuth2)."""

    headers: dict[str, str] = field(repr=False)
    query: tuple[str, str] | None = field(default=None, repr=False)
    token: Token | None = None

    def apply(self, url: URL) -> URL:
        """``url`` with the query credential appended (percent-encoded), if any."""
        if self.query is None:
            return url
        name, value = self.query
        text = str(url)
        base, hash_, fragment = text.partition("#")
        joiner = "&" if "?" in base else "?"
        pair = f"{quote(name, safe='')}={quote(value, safe='')}"
        return URL(f"{base}{joiner}{pair}{hash_}{fragment}", encoded=True)


class Authenticator:
    """Turns ``auth`` into credentials for each request."""

    def __init__(self, auth: RestAuth | None, clock: Callable[[], float] | None = None) -> None:
        self.auth = auth
        self.tokens: TokenSource | None = None
        if auth is not None and auth.oauth2 is not None:
            self.tokens = (
                TokenSource(auth.oauth2) if clock is None else TokenSource(auth.oauth2, clock)
            )

    @property
    def kind(self) -> str:
        """The auth kind, or ``none``."""
        return "none" if self.auth is None else self.auth.kind

    async def credentials(self, session: aiohttp.ClientSession) -> Credentials:
        """The credentials to send now (fetching an OAuth2 token when needed)."""
        auth = self.auth
        if auth is None:
            return Credentials({})
        if auth.bearer is not None:
            return Credentials({"Authorization": f"Bearer {auth.bearer.get_secret_value()}"})
        if auth.basic is not None:
            pair = f"{auth.basic.username}:{auth.basic.password.get_secret_value()}"
            encoded = base64.b64encode(pair.encode()).decode()
            return Credentials({"Authorization": f"Basic {encoded}"})
        if auth.header is not None:
            return Credentials({auth.header.name: auth.header.value.get_secret_value()})
        if auth.query is not None:
            return Credentials({}, (auth.query.name, auth.query.value.get_secret_value()))
        assert self.tokens is not None
        token = await self.tokens.get(session)
        return Credentials({"Authorization": f"Bearer {token.access_token}"}, token=token)

    def refused(self, credentials: Credentials) -> bool:
        """The upstream answered 401: drop the token; True when a retry may help (OAuth2)."""
        if self.tokens is None or credentials.token is None:
            return False
        self.tokens.invalidate(credentials.token)
        return True

    def header_names(self) -> set[str]:
        """Header names this auth sets (lower case), to refuse clashes with ``headers``."""
        auth = self.auth
        if auth is None or auth.query is not None:
            return set()
        if auth.header is not None:
            return {auth.header.name.lower()}
        return {"authorization"}
