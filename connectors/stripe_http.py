"""How the stripe connector talks to Stripe: bounded answers, no redirects, shared call limits.

The official library reads whole bodies and follows redirects; ``BoundedHTTPClient`` is its
aiohttp client with both fixed: an answer larger than ``max_body_bytes`` (on the wire or
once decompressed, so a gzip bomb stops at the cap) is an error, and a redirect is never
followed (the key would be dropped, but the answer of another origin trusted).

``StripeLimits`` holds what every Stripe call of the process shares: at most ``rate`` calls
in any one-second window for the account and ``endpoint_rate`` per endpoint (Stripe counts
each named operation apart), and at most ``concurrency`` calls in flight.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import stripe
from yarl import URL

from aggregator.errors import ConnectorError, FatalError, RetriableError, UnavailableError

KEY_REFUSED = "stripe: the API key was refused (401); check STRIPE_API_KEY"
_CHUNK = 64 * 1024
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class KeyRefusedError(FatalError):
    """Stripe answered 401: the API key is wrong, revoked or of another account."""


# --- answers ----------------------------------------------------------------------------------


async def read_bounded(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body of ``response``, decompressed; FatalError past ``cap`` bytes either way."""
    if response.content_length is not None and response.content_length > cap:
        raise FatalError(f"stripe: answer larger than max_body_bytes ({cap})")
    coding = response.headers.get("Content-Encoding", "identity").strip().lower()
    decoder = None
    if coding not in ("", "identity"):
        if coding not in _ENCODINGS:
            raise FatalError(f"stripe: answer in an unsupported Content-Encoding ({coding[:20]})")
        decoder = zlib.decompressobj(_ENCODINGS[coding])
    body = bytearray()
    received = 0
    try:
        async for chunk in response.content.iter_chunked(_CHUNK):
            received += len(chunk)
            if received > cap:
                raise FatalError(f"stripe: answer larger than max_body_bytes ({cap})")
            if decoder is None:
                body += chunk
            else:
                body += decoder.decompress(chunk, cap + 1 - len(body))
                if decoder.unconsumed_tail:
                    body += b"\0"  # more output was waiting: over the cap
            if len(body) > cap:
                raise FatalError(f"stripe: answer larger than max_body_bytes ({cap}) decompressed")
        if decoder is not None:
            body += decoder.flush()
            if not decoder.eof or decoder.unused_data:
                raise zlib.error("truncated, or data after the end")
    except zlib.error:
        raise FatalError(f"stripe: answer not valid {coding}") from None
    if len(body) > cap:
        raise FatalError(f"stripe: answer larger than max_body_bytes ({cap}) decompressed")
    return bytes(body)


class BoundedHTTPClient(stripe.AIOHTTPClient):
    """The library's aiohttp client over a shared session, with capped bodies and no redirects."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float, max_body_bytes: int) -> None:
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        super().__init__(session=session, timeout=self._client_timeout)
        self._max_body_bytes = max_body_bytes
        self._session_ref = session

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        """Send one request; the body is read under the cap, a redirect is an error."""
        sent = {**headers, "Accept-Encoding": "gzip, deflate"}
        try:
            response = await self._session_ref.request(
                method,
                url,
                headers=sent,
                data=post_data,
                timeout=self._client_timeout,
                allow_redirects=False,
                auto_decompress=False,
            )
        except Exception as exc:
            self._handle_request_error(exc)
        try:
            if 300 <= response.status < 400:
                raise FatalError(_redirect_message(url, response))
            body = await read_bounded(response, self._max_body_bytes)
        except aiohttp.ClientError as exc:
            response.close()
            self._handle_request_error(exc)  # a body cut short: a connection error
        except BaseException:
            response.close()  # never drain what is left of a hostile body
            raise
        response.release()
        return body, response.status, response.headers


def _redirect_message(url: str, response: aiohttp.ClientResponse) -> str:
    target = URL(url).join(URL(response.headers.get("Location", "")))
    origin = URL(url).origin()
    where = "to another origin" if target.is_absolute() and target.origin() != origin else ""
    return f"stripe: answered with a redirect {where} (HTTP {response.status}); not followed"


# --- errors -------------------------------------------------------------------------------


def _header(error: stripe.StripeError, name: str) -> str | None:
    headers: Mapping[str, str] = error.headers or {}
    lowered = name.lower()
    return next((value for key, value in headers.items() if key.lower() == lowered), None)


def _retry_after(error: stripe.StripeError) -> float | None:
    value = _header(error, "Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


def map_error(error: stripe.StripeError) -> ConnectorError:
    """Translate a Stripe library error into what the engine should do next."""
    status = error.http_status
    if isinstance(error, stripe.AuthenticationError):
        return KeyRefusedError("stripe: invalid API key (refused with 401); check STRIPE_API_KEY")
    if isinstance(error, stripe.PermissionError):
        return FatalError("stripe: API key lacks read access to what the profile reads")
    if isinstance(error, stripe.APIConnectionError):
        cause = error.__cause__
        if isinstance(cause, aiohttp.ClientConnectorError | ConnectionError):
            return UnavailableError("stripe: unreachable")
        return RetriableError("stripe: connection failed")
    should_retry = (_header(error, "Stripe-Should-Retry") or "").lower()
    if should_retry == "false":
        return FatalError(f"stripe: HTTP {status}, not to be retried")
    if isinstance(error, stripe.RateLimitError) or status == 429:
        return RetriableError("stripe: rate limited", retry_after=_retry_after(error))
    if should_retry == "true" or (status is not None and (status >= 500 or status == 409)):
        return RetriableError(f"stripe: HTTP {status}", retry_after=_retry_after(error))
    if isinstance(error, stripe.InvalidRequestError):
        return FatalError(f"stripe: invalid request ({error.param or error.code or status})")
    return FatalError(f"stripe: {type(error).__name__} (HTTP {status})")


# --- limits -------------------------------------------------------------------------------


class CallWindow:
    """At most ``rate`` calls in any window of one second (a sliding log of call times).

    A token bucket lets a full bucket and a second's refill through in one second; the log
    never does, which is what Stripe's per-second limits count.
    """

    def __init__(
        self, rate: float, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.count = max(1, int(rate))
        self.window = self.count / rate
        self._clock = clock
        self._sleep = sleep
        self._times: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait (first come, first served) until a call fits in the window, then record it."""
        async with self._lock:
            while True:
                now = self._clock()
                while self._times and self._times[0] + self.window <= now:
                    self._times.popleft()
                if len(self._times) < self.count:
                    self._times.append(now)
                    return
                await self._sleep(self._times[0] + self.window - now)


@dataclass(frozen=True)
class LimitSettings:
    """The figures a ``StripeLimits`` enforces."""

    rate: float
    endpoint_rate: float
    concurrency: int


class StripeLimits:
    """The account-wide call window, one window per endpoint and the in-flight bound."""

    def __init__(
        self, figures: LimitSettings, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.figures = figures
        self._clock = clock
        self._sleep = sleep
        self.account = CallWindow(figures.rate, clock, sleep)
        self.endpoints: dict[str, CallWindow] = {}
        self._in_flight = asyncio.Semaphore(figures.concurrency)
        self.calls = 0

    @asynccontextmanager
    async def slot(self, endpoint: str) -> AsyncIterator[None]:
        """Hold a place in flight and a place in both windows for one call to ``endpoint``."""
        async with self._in_flight:
            window = self.endpoints.get(endpoint)
            if window is None:
                window = CallWindow(self.figures.endpoint_rate, self._clock, self._sleep)
                self.endpoints[endpoint] = window
            await window.acquire()
            await self.account.acquire()
            self.calls += 1
            yield


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)


def account_id(api_base: str, api_key: str) -> str:
    """A short digest naming one Stripe account and address, never the key itself."""
    return hashlib.sha256(f"{api_base.rstrip('/')}\n{api_key}".encode()).hexdigest()[:16]


def shared(kind: str, account: str, make: Callable[[], Any], matches: Callable[[Any], bool]) -> Any:
    """The process-wide (per event loop) object ``kind`` of ``account``, made when missing
    or when the one held does not ``match`` the current settings (after a reload)."""
    per_loop = _SHARED.setdefault(asyncio.get_running_loop(), {})
    held = per_loop.get(f"{kind}:{account}")
    if held is None or not matches(held):
        held = make()
        per_loop[f"{kind}:{account}"] = held
    return held
