"""Typed keys of the state an application carries."""

from __future__ import annotations

from aiohttp import web

from aggregator.metrics import Metrics
from aggregator.runtime import LiveRuntime
from aggregator.service import ProfileService
from connectors.base import FetchOutcome

METRICS = web.AppKey("metrics", Metrics)
SERVICE = web.AppKey("service", ProfileService)
LIVE = web.AppKey("live_runtime", LiveRuntime)
EXPOSED = web.AppKey("exposed", bool)
"""Set by whoever binds the socket: True when the proxy listens beyond loopback."""

CACHE_STATE = web.RequestKey("cache_state", str)
OUTCOMES = web.RequestKey("outcomes", tuple[FetchOutcome, ...])
