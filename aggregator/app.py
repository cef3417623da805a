"""create_app(settings) -> web.Application: wiring only, no I/O until the app starts."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import aiohttp
from aiohttp import web

from aggregator import handlers, logs, preview, webhooks
from aggregator.config import Settings
from aggregator.keys import CACHE_STATE, LIVE, METRICS, OUTCOMES, SERVICE
from aggregator.logs import install_redactor
from aggregator.metrics import Metrics
from aggregator.privacy import mask_email
from aggregator.reload import reload_context
from aggregator.resilience import RateLimiter
from aggregator.runtime import LiveRuntime, build
from aggregator.service import Clock, ProfileService

log = logging.getLogger("aggregator.http")
request_log = logging.getLogger("aggregator.request")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Layer = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


async def error_layer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes a JSON body; an unexpected exception is a logged 500 (a bug)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return handlers.internal_error(request, exc)
    except Exception as exc:
        return handlers.internal_error(request, exc)


def client_guard_layer(settings: Settings) -> Layer:
    """Optional IP allow-list and per-client rate limit in front of every route but probes."""
    networks = [ipaddress.ip_network(net) for net in settings.server.allow_ips]
    rate = settings.server.client_rate_limit
    burst = float(settings.server.client_burst)
    buckets: dict[str, RateLimiter] = {}
    open_paths = {"/healthz", "/readyz"}

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


async def request_log_layer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request: id, route, status, time, cache state, connector outcomes."""
    started = time.perf_counter()
    request_id = logs.request_id(request.headers.get("X-Request-Id"))
    response = await handler(request)
    outcomes = request.get(OUTCOMES, ())
    request_log.info(
        "request",
        extra={
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "email": mask_email(request.query.get("email") or ""),
            "status": response.status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "cache": request.get(CACHE_STATE),
            "connectors": {o.name: o.status for o in outcomes},
        },
    )
    return response


def wrap(handler: Handler, layers: Sequence[Layer]) -> Handler:
    """``handler`` behind ``layers`` (first = outermost), composed once at start-up.

    Cheaper per request than aiohttp middlewares, which matters on the cached path.
    """
    wrapped = handler
    for layer in reversed(layers):
        wrapped = _bind(layer, wrapped)
    return wrapped


def _bind(layer: Layer, inner: Handler) -> Handler:
    async def call(request: web.Request) -> web.StreamResponse:
        return await layer(request, inner)

    return call


def create_app(settings: Settings, *, clock: Clock = time.time) -> web.Application:
    """The proxy as an aiohttp application; resources open when it starts.

    ``clock`` (epoch seconds) dates cached profiles; tests pass a fake one.
    """
    install_redactor()
    access: list[Layer] = [request_log_layer] if settings.server.access_log else []
    guard: list[Layer] = []
    if settings.server.allow_ips or settings.server.client_rate_limit is not None:
        guard.append(client_guard_layer(settings))
    layers = [*access, error_layer, *guard]
    # The profile route, the hot path, turns its own errors into JSON: no error layer.
    profile_layers = [*access, *guard]
    app = web.Application(
        handler_args={
            "max_line_size": settings.server.max_request_line,
            "max_field_size": settings.server.max_header_size,
        },
    )
    metrics = Metrics()
    app[METRICS] = metrics
    service = app[SERVICE] = ProfileService(build(settings), metrics, clock=clock)
    app.cleanup_ctx.append(_serving)
    app.cleanup_ctx.append(reload_context)

    path = settings.server.path
    profile = handlers.profile_handler(service, metrics, remember=settings.server.access_log)
    routes: list[tuple[str, str, Handler]] = [
        ("POST", path.rstrip("/") + "/purge", handlers.purge),
        ("GET", "/healthz", handlers.healthz),
        ("GET", "/readyz", handlers.readyz),
        ("GET", "/metrics", handlers.metrics),
        ("POST", "/webhooks/stripe", webhooks.stripe_webhook),
        ("GET", "/preview", preview.page),
        ("POST", "/preview", preview.api),
    ]
    allowed: dict[str, set[str]] = {}
    routed = [("GET", path, wrap(profile, profile_layers))]
    routed += [
        (method, route_path, wrap(handler, layers)) for method, route_path, handler in routes
    ]
    for method, route_path, wrapped in routed:
        for verb in (method, "HEAD") if method == "GET" else (method,):
            app.router.add_route(verb, route_path, wrapped)
            allowed.setdefault(route_path, set()).add(verb)
    app.router.add_route("*", "/{tail:.*}", wrap(_unrouted(allowed), layers))
    return app


def _unrouted(allowed: dict[str, set[str]]) -> Handler:
    """JSON 405 for a known path with another method, JSON 404 for anything else."""

    async def unrouted(request: web.Request) -> web.StreamResponse:
        methods = allowed.get(request.path)
        if methods:
            response = handlers.json_error(405, "method not allowed")
            response.headers["Allow"] = ", ".join(sorted(methods))
            return response
        return handlers.json_error(404, "not found")

    return unrouted


async def _serving(app: web.Application) -> AsyncIterator[None]:
    """Open the runtime (store, then connectors) for as long as the app runs."""
    service = app[SERVICE]
    connector = aiohttp.TCPConnector(limit=200, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector, raise_for_status=False) as session:
        live = LiveRuntime(session, service.use)
        await live.start(service.runtime)
        app[LIVE] = live
        try:
            yield
        finally:
            await service.close()
            await live.close()
