"""HTTP handlers: parse, authenticate, call the service, answer. Nothing else."""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence

import orjson
from aiohttp import web

from aggregator.emails import InvalidEmail, normalize_email, remember_as_sent
from aggregator.keys import CACHE_STATE, METRICS, OUTCOMES, SERVICE

JSON = "application/json"


def json_error(status: int, message: str) -> web.Response:
    """A JSON ``{"error": message}`` answer with the given status."""
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type=JSON)


def token_matches(candidate: str | None, tokens: Sequence[bytes]) -> bool:
    """Compare against every configured token in constant time (no early exit)."""
    given = (candidate or "").encode("utf-8", "surrogateescape")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given, token)
    return matched and candidate is not None


def authenticated_email(request: web.Request, tokens: Sequence[bytes]) -> str | web.Response:
    """The normalized email of a request bearing one of ``tokens``, or the 401/400 to send."""
    query = request.rel_url.query
    if not token_matches(query.get("api_token"), tokens):
        return json_error(401, "missing or invalid api_token")
    try:
        return normalize_email(query.get("email"))
    except InvalidEmail as exc:
        return json_error(400, str(exc))


async def profile(request: web.Request) -> web.Response:
    """GET /profile?email=&api_token=: the flat JSON profile."""
    started = time.perf_counter()
    app = request.app
    service = app[SERVICE]
    email = authenticated_email(request, service.runtime.tokens)
    if isinstance(email, web.Response):
        app[METRICS].requests.labels("profile", str(email.status)).inc()
        return email
    body = service.cached_body(email)
    if body is not None:
        app[METRICS].cached_hit(time.perf_counter() - started)
        request[CACHE_STATE] = "hit"
        return web.Response(body=body, content_type=JSON)
    answer = await service.get(remember_as_sent(email, request.rel_url.query.get("email")))
    request[CACHE_STATE] = answer.cache
    request[OUTCOMES] = tuple(answer.outcomes)
    metrics = app[METRICS]
    metrics.latency.labels(answer.cache).observe(time.perf_counter() - started)
    metrics.requests.labels("profile", "200").inc()
    return web.Response(body=answer.body, content_type=JSON)


async def healthz(request: web.Request) -> web.Response:
    """200 while the process runs."""
    return web.Response(body=b'{"status":"ok"}', content_type=JSON)


async def readyz(request: web.Request) -> web.Response:
    """200 while the proxy can answer, a per-part JSON body; a cache that is down is reported
    as degraded (answers go on, uncached), not as unready."""
    runtime = request.app[SERVICE].runtime
    cache_ok, cache_detail = await runtime.store.ready()
    connectors = {
        connector.name: {"circuit": connector.circuit.state} for connector in runtime.connectors
    }
    parts = {
        "status": "ok" if cache_ok else "degraded",
        "config": {"ok": True, "source": str(runtime.settings.source or "<memory>")},
        "cache": {"ok": cache_ok, "degraded": not cache_ok, "detail": cache_detail},
        "connectors": connectors,
    }
    return web.Response(body=orjson.dumps(parts), content_type=JSON)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def purge(request: web.Request) -> web.Response:
    """POST /profile/purge?email=&api_token=: drop one email's cached profile."""
    service = request.app[SERVICE]
    email = authenticated_email(request, service.runtime.tokens)
    if isinstance(email, web.Response):
        return email
    purged = await service.purge(email)
    if not purged:
        return json_error(503, "the cache could not be reached; nothing was purged")
    return web.Response(body=orjson.dumps({"purged": True}), content_type=JSON)
