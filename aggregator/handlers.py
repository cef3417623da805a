"""HTTP handlers: parse, authenticate, call the service, answer. Nothing else."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from aggregator.emails import Email, InvalidEmail, normalize_email, remember_as_sent
from aggregator.keys import CACHE_STATE, METRICS, OUTCOMES, SERVICE
from aggregator.metrics import Metrics
from aggregator.service import ProfileService

JSON = "application/json"
# One header set for every profile answer: aiohttp copies it, nothing is built per request.
PROFILE_HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": JSON}))
log = logging.getLogger("aggregator.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def authenticated_email(request: web.Request, tokens: Sequence[bytes]) -> Email | web.Response:
    """The email of a request bearing one of ``tokens`` (normalized, remembering how it was
    written), or the 401/400 to send."""
    query = request.rel_url.query
    if not token_matches(query.get("api_token"), tokens):
        return json_error(401, "missing or invalid api_token")
    raw = query.get("email")
    try:
        return remember_as_sent(normalize_email(raw), raw)
    except InvalidEmail as exc:
        return json_error(400, str(exc))


def internal_error(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer to an exception a handler let out: its own status for an HTTP error,
    else a logged 500 (a bug)."""
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return json_error(exc.status, exc.reason)
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return json_error(500, "internal error")


def profile_handler(service: ProfileService, metrics: Metrics, *, remember: bool) -> Handler:
    """GET <path>?email=&api_token=: the flat JSON profile.

    A cached hit is the hot path: the query string is looked up among the ones already
    accepted (aggregator/query.py), the body comes from the in-process copy without an
    await, and the metrics are plain additions. ``remember`` stores the cache state and
    connector outcomes on the request for the access log.
    """
    hit = metrics.cached_hit
    requests = metrics.requests
    latency = metrics.latency

    async def profile(request: web.Request) -> web.Response:
        started = perf_counter()
        try:
            runtime = service.runtime
            raw_query = request.rel_url.raw_query_string
            email = runtime.accepted.get(raw_query)
            if email is None:
                checked = authenticated_email(request, runtime.tokens)
                if not isinstance(checked, Email):
                    requests.labels("profile", str(checked.status)).inc()
                    return checked
                email = checked
                runtime.accepted.add(raw_query, email)
            body = service.cached_body(email)
            if body is not None:
                hit(perf_counter() - started)
                if remember:
                    request[CACHE_STATE] = "hit"
                return web.Response(body=body, headers=PROFILE_HEADERS)
            answer = await service.get(email)
            if remember:
                request[CACHE_STATE] = answer.cache
                request[OUTCOMES] = tuple(answer.outcomes)
            latency.labels(answer.cache).observe(perf_counter() - started)
            requests.labels("profile", "200").inc()
            return web.Response(body=answer.body, headers=PROFILE_HEADERS)
        except Exception as exc:  # the error layer's job, done here: this route has no layers
            return internal_error(request, exc)

    return profile


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
