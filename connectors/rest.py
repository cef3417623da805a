"""The ``rest`` connector: one JSON HTTP API (a CRM, a billing backend) per customer email.

The URL is a template; ``{email}`` becomes the email percent-encoded with nothing left
safe, so no email can add a path segment, a query key or a header. A JMESPath ``select``
picks the object to flatten and ``fields`` may pick and rename values from it.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import aiohttp
import jmespath
import orjson
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from pydantic import Field, field_validator, model_validator
from yarl import URL

from aggregator.errors import FatalError, RetriableError, UnavailableError
from connectors.base import Connector, ConnectorSettings

EMAIL_FIELD = "{email}"
# Plain letters and digits: URL normalisation leaves them alone in a path or a query.
_STAND_IN = "emailPLACEHOLDERq7x3z9"
_PROBE_EMAIL = "aggregator-check@example.invalid"
_CHUNK = 64 * 1024


def _compile(expression: str) -> ParsedResult:
    try:
        return jmespath.compile(expression)
    except JMESPathError as exc:
        raise ValueError(f"invalid JMESPath expression {expression!r}: {exc}") from None


def _parse_template(url: str) -> URL:
    """Parse the template with a stand-in for ``{email}``; raise ValueError when unusable."""
    parsed = URL(url.replace(EMAIL_FIELD, _STAND_IN))
    if parsed.scheme not in ("http", "https"):
        raise ValueError("url must start with http:// or https://")
    if not parsed.host:
        raise ValueError("url has no host")
    if _STAND_IN.lower() in (parsed.raw_authority or "").lower():
        raise ValueError("{email} may only appear in the path or the query, not the host")
    return parsed


class RestSettings(ConnectorSettings):
    """Settings of a ``rest`` connector."""

    type: Literal["rest"] = "rest"
    url: str = Field(description="http(s) URL template; {email} is replaced, percent-encoded.")
    method: Literal["GET", "POST"] = Field(
        default="GET", description='POST sends {"email": ...} as JSON.'
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every request.")
    select: str | None = Field(default=None, description="JMESPath choosing the object to flatten.")
    fields: dict[str, str] | None = Field(
        default=None,
        description="Output name -> JMESPath on the selected value; None values omitted.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1, description="Larger answers are an error.")
    not_found_statuses: list[int] = Field(
        default_factory=lambda: [404], description="Statuses meaning 'unknown customer'."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        _parse_template(value)
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not name or any(c in name for c in "\r\n:") or any(c in text for c in "\r\n"):
                raise ValueError(f"header {name!r}: no line breaks allowed (nor ':' in the name)")
        return value

    @field_validator("select")
    @classmethod
    def _check_select(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, expression in (value or {}).items():
            if not name:
                raise ValueError("fields: an output name is empty")
            _compile(expression)
        return value

    @model_validator(mode="after")
    def _email_in_get_url(self) -> RestSettings:
        if self.method == "GET" and EMAIL_FIELD not in self.url:
            raise ValueError("url must contain {email} (a GET cannot identify the customer else)")
        return self


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class RestConnector(Connector[RestSettings]):
    """Fetches one JSON document per email from an HTTP API and returns the selected object.

    - Statuses in ``not_found_statuses`` (404) and an empty selection (null, {}, []) mean an
      unknown customer. 429, 408 and 5xx are retriable (``Retry-After`` honoured); other
      4xx, 3xx (redirects are not followed, so headers never leave the configured host),
      a body that is not JSON or larger than ``max_body_bytes`` are fatal.
    - Without ``fields`` the selected value must be a JSON object (else fatal). With
      ``fields`` each expression runs on the selected value whatever its type, so a list
      or a scalar may be picked from too; names whose value is null are left out.
    - Timeouts, retries and the circuit breaker are the base class's job.
    """

    settings_model: ClassVar[type[ConnectorSettings]] = RestSettings

    def __init__(self, name: str, settings: RestSettings) -> None:
        super().__init__(name, settings)
        self._template = str(_parse_template(settings.url))
        self._select = _compile(settings.select) if settings.select else None
        self._fields = {k: _compile(v) for k, v in (settings.fields or {}).items()}
        self._headers = {"Accept": "application/json", **settings.headers}
        self._session: aiohttp.ClientSession | None = None

    async def open(self, session: aiohttp.ClientSession) -> None:
        """Use the app's shared HTTP session (it is not closed by ``close``)."""
        self._session = session

    async def close(self) -> None:
        """Forget the shared session; its owner closes it."""
        self._session = None

    def request_url(self, email: str) -> URL:
        """The URL for one email; the email is data, never structure."""
        built = self._template.replace(_STAND_IN, quote(email, safe=""))
        return URL(built, encoded=True)

    async def check(self) -> None:
        """Probe with an unknown email; fail on no connection, redirects, 401/403 or 5xx."""
        status, _, body = await self._request(_PROBE_EMAIL)
        if status in (401, 403):
            raise FatalError(f"HTTP {status}: the upstream refused the credentials in headers")
        if status >= 500:
            raise RetriableError(f"HTTP {status}: the upstream is failing")
        if 300 <= status < 400:
            raise FatalError(f"HTTP {status}: redirects are not followed; set the final url")
        if body is not None:
            self._extract(body)

    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        status, retry_after, body = await self._request(email)
        if status in self.settings.not_found_statuses:
            return None
        if status == 429 or status == 408 or status >= 500:
            raise RetriableError(f"HTTP {status}", retry_after=retry_after)
        if body is None:
            raise FatalError(f"HTTP {status}")
        return self._extract(body)

    async def _request(self, email: str) -> tuple[int, float | None, bytes | None]:
        """Send the request; return the status, ``Retry-After`` and the body of a 2xx."""
        if self._session is None:
            raise RuntimeError(f"connector {self.name} used before open()")
        payload = {"email": email} if self.settings.method == "POST" else None
        try:
            async with self._session.request(
                self.settings.method,
                self.request_url(email),
                headers=self._headers,
                json=payload,
                allow_redirects=False,
            ) as resp:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                status = resp.status
                wanted = 200 <= status < 300 and status not in self.settings.not_found_statuses
                body = await self._read_capped(resp) if wanted else None
                return status, retry_after, body
        except aiohttp.ClientSSLError as exc:
            raise FatalError(f"TLS failure: {type(exc).__name__}") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UnavailableError(f"cannot connect to {exc.host}:{exc.port}") from exc
        except aiohttp.ClientError as exc:
            raise RetriableError(f"transport failure: {type(exc).__name__}") from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self.settings.max_body_bytes
        body = bytearray()
        if resp.content_length is None or resp.content_length <= cap:
            async for chunk in resp.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > cap:
                    break
            else:
                return bytes(body)
        resp.close()
        raise FatalError(f"answer larger than max_body_bytes ({cap})")

    def _extract(self, body: bytes) -> Mapping[str, Any] | None:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FatalError("the answer is not JSON") from None
        try:
            selected = self._select.search(document) if self._select else document
            if selected is None or selected in ({}, []):
                return None
            if self._fields:
                picked = {name: expr.search(selected) for name, expr in self._fields.items()}
                return {name: value for name, value in picked.items() if value is not None}
        except JMESPathError as exc:
            raise FatalError(f"JMESPath failed on the answer: {type(exc).__name__}") from None
        if not isinstance(selected, dict):
            raise FatalError(f"the selected value is a {type(selected).__name__}, not an object")
        return selected
