"""create_app(settings) -> web.Application: wiring only, no I/O until the app starts."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from aggregator import handlers, preview, webhooks
from aggregator.cache import ProfileStore
from aggregator.config import Settings
from aggregator.keys import (
    CACHE_STATE,
    CONFIG,
    HTTP_SESSION,
    METRICS,
    OUTCOMES,
    RELOADER,
    SERVICE,
    STORE,
    TOKENS,
)
from aggregator.logs import install_redactor
from aggregator.metrics import Metrics
from aggregator.registry import get_connector_type
from aggregator.reload import reload_context
from aggregator.resilience import RateLimiter
from aggregator.service import ProfileService
from connectors.base import Connector

log = logging.getLogger("aggregator.http")
request_log = logging.getLogger("aggregator.request")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_connectors(settings: Settings) -> list[Connector[Any]]:
    """Instantiate every enabled connector, in config order."""
    return [
        get_connector_type(conf.type)(name, conf) for name, conf in settings.enabled_connectors()
    ]


def store_namespace(settings: Settings) -> str:
    """The cache namespace plus a fingerprint of what shapes a profile.

    Changing connectors, their order or prefixes, or the merge settings starts a fresh
    set of keys, so no profile built under the old layout is served under the new one.
    """
    shape = [[name, conf.type, conf.prefix] for name, conf in settings.enabled_connectors()] + [
        settings.merge.max_list_items,
        settings.merge.meta_prefix,
    ]
    digest = hashlib.sha256(orjson.dumps(shape)).hexdigest()[:8]
    return f"{settings.cache.namespace}:{digest}"


def build_store(settings: Settings) -> ProfileStore:
    """The profile store the cache settings describe."""
    cache = settings.cache
    return ProfileStore(
        cache.url,
        namespace=store_namespace(settings),
        max_entries=cache.max_entries,
        near_ttl=cache.near_ttl,
        timeout=cache.timeout,
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes a JSON body; an unexpected exception is a logged 500 (a bug)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return handlers.json_error(exc.status, exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return handlers.json_error(500, "internal error")


def client_guard_middleware(settings: Settings) -> Any:
    """Optional IP allow-list and per-client rate limit in front of every route but probes."""
    networks = [ipaddress.ip_network(net) for net in settings.server.allow_ips]
    rate = settings.server.client_rate_limit
    burst = float(settings.server.client_burst)
    buckets: dict[str, RateLimiter] = {}
    open_paths = {"/healthz", "/readyz"}

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        remote = request.remote or ""
        if networks:
            try:
                address = ipaddress.ip_address(remote)
            except ValueError:
                return handlers.json_error(403, "client address not allowed")
            if not any(address in net for net in networks):
                return handlers.json_error(403, "client address not allowed")
        if rate is not None:
            bucket = buckets.get(remote)
            if bucket is None:
                if len(buckets) > 10_000:
                    buckets.clear()
                bucket = buckets[remote] = RateLimiter(rate, burst)
            if not bucket.try_acquire():
                return handlers.json_error(429, "too many requests from this client")
        return await handler(request)

    return guard


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request: id, route, status, time, cache state, connector outcomes."""
    started = time.perf_counter()
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    response = await handler(request)
    outcomes = request.get(OUTCOMES, ())
    request_log.info(
        "request",
        extra={
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "cache": request.get(CACHE_STATE),
            "connectors": {o.name: o.status for o in outcomes},
        },
    )
    return response


def create_app(settings: Settings) -> web.Application:
    """The proxy as an aiohttp application; resources open when it starts."""
    install_redactor()
    middlewares: list[Any] = [error_middleware]
    if settings.server.allow_ips or settings.server.client_rate_limit is not None:
        middlewares.append(client_guard_middleware(settings))
    if settings.server.access_log:
        middlewares.insert(0, request_log_middleware)
    app = web.Application(
        middlewares=middlewares,
        handler_args={
            "max_line_size": settings.server.max_request_line,
            "max_field_size": settings.server.max_header_size,
        },
    )
    metrics = Metrics()
    store = build_store(settings)
    connectors = build_connectors(settings)
    app[CONFIG] = settings
    app[TOKENS] = [t.get_secret_value().encode() for t in settings.auth.api_tokens]
    app[RELOADER] = []
    app[METRICS] = metrics
    app[STORE] = store
    app[SERVICE] = ProfileService(settings, connectors, store, metrics)
    app.cleanup_ctx.append(_http_session)
    app.cleanup_ctx.append(_cache)
    app.cleanup_ctx.append(_connectors)
    app.cleanup_ctx.append(_service)
    app.cleanup_ctx.append(reload_context)

    path = settings.server.path
    app.router.add_get(path, handlers.profile)
    app.router.add_post(path.rstrip("/") + "/purge", handlers.purge)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_post("/webhooks/stripe", webhooks.stripe_webhook)
    app.router.add_get("/preview", preview.page)
    app.router.add_post("/preview", preview.api)
    return app


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=200, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector, raise_for_status=False) as session:
        app[HTTP_SESSION] = session
        yield


async def _cache(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[SERVICE].store.close()


async def _connectors(app: web.Application) -> AsyncIterator[None]:
    session = app[HTTP_SESSION]
    opened: list[Connector[Any]] = []
    try:
        for connector in app[SERVICE].connectors:
            await connector.open(session)
            opened.append(connector)
        yield
    finally:
        for connector in reversed(opened):
            try:
                await connector.close()
            except Exception as exc:  # closing must go on for the others
                log.warning("closing connector %s: %s", connector.name, type(exc).__name__)


async def _service(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[SERVICE].close()
