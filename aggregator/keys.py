"""Typed keys of the state an application carries."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from aggregator.metrics import Metrics
from aggregator.service import ProfileService
from connectors.base import FetchOutcome

if TYPE_CHECKING:
    from aggregator.reload import Reloader

TOKENS = web.AppKey("tokens", list[bytes])
METRICS = web.AppKey("metrics", Metrics)
SERVICE = web.AppKey("service", ProfileService)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
RELOADER = web.AppKey("reloader", list["Reloader"])

CACHE_STATE = web.RequestKey("cache_state", str)
OUTCOMES = web.RequestKey("outcomes", tuple[FetchOutcome, ...])
