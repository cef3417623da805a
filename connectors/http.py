"""One HTTP exchange for the rest machinery: no redirects, a capped body, mapped errors."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from aggregator.errors import FatalError, RetriableError, UnavailableError

_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back: the status, the headers and (when read) the body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes | None


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


async def exchange(
    session: aiohttp.ClientSession,
    method: str,
    url: URL,
    *,
    headers: Mapping[str, str],
    body: bytes | None,
    max_body_bytes: int,
    read_body: bool | Callable[[int], bool],
) -> Reply:
    """Send one request and read the answer (its body only when ``read_body`` says so).

    Redirects are never followed, so headers and tokens never leave the configured
    host. Transport failures become UnavailableError (no connection), FatalError (TLS)
    or RetriableError (anything else); the messages hold no URL and no header.
    """
    try:
        async with session.request(
            method, url, headers=dict(headers), data=body, allow_redirects=False
        ) as resp:
            wanted = read_body(resp.status) if callable(read_body) else read_body
            data = await read_capped(resp, max_body_bytes) if wanted else None
            return Reply(resp.status, resp.headers, data)
    except aiohttp.ClientSSLError as exc:
        raise FatalError(f"TLS failure: {type(exc).__name__}") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UnavailableError(f"cannot connect to {exc.host}:{exc.port}") from exc
    except aiohttp.ClientError as exc:
        raise RetriableError(f"transport failure: {type(exc).__name__}") from exc


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, read in chunks; FatalError (and the connection dropped) past ``cap`` bytes."""
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
