"""Apply a changed config.yaml without a restart (SIGHUP, or the file's mtime changing).

Connectors whose settings did not change keep their pools; changed or new ones are
built and opened before the switch; the ones left behind are closed once requests
that may still use them are done. A config that fails validation is logged with
file, line and field, and the running one stays.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from aggregator.cache import ProfileStore
from aggregator.config import Settings, load_settings
from aggregator.errors import ConfigError
from aggregator.keys import HTTP_SESSION, RELOADER, SERVICE, TOKENS
from aggregator.registry import get_connector_type
from connectors.base import Connector

log = logging.getLogger("aggregator.reload")

POLL_SECONDS = 2.0
RESTART_ONLY = (
    "host",
    "port",
    "access_log",
    "max_request_line",
    "max_header_size",
    "header_timeout",
    "workers",
)


class Reloader:
    """Reloads the app's configuration from its file on demand."""

    def __init__(self, app: web.Application, path: Path) -> None:
        self.app = app
        self.path = path
        self._lock = asyncio.Lock()
        self._mtime = _mtime(path)
        self._retired: set[asyncio.Task[None]] = set()

    async def reload(self) -> bool:
        """Load the file again and switch to it; False (and the old config kept) if refused."""
        async with self._lock:
            self._mtime = _mtime(self.path)
            try:
                settings = await asyncio.to_thread(load_settings, self.path)
            except ConfigError as exc:
                log.error("config reload refused, the running config stays:\n%s", exc)
                return False
            await self._apply(settings)
            return True

    async def _apply(self, settings: Settings) -> None:
        service = self.app[SERVICE]
        old = service.settings
        for key in RESTART_ONLY:
            if getattr(old.server, key) != getattr(settings.server, key):
                log.warning("server.%s changed: it takes effect at the next restart", key)
        kept: dict[str, Connector[Any]] = {c.name: c for c in service.connectors}
        connectors: list[Connector[Any]] = []
        opened: list[Connector[Any]] = []
        try:
            for name, conf in settings.enabled_connectors():
                current = kept.get(name)
                if current is not None and current.settings == conf:
                    connectors.append(kept.pop(name))
                    continue
                connector = get_connector_type(conf.type)(name, conf)
                await connector.open(self.app[HTTP_SESSION])
                opened.append(connector)
                connectors.append(connector)
        except Exception as exc:
            log.error(
                "config reload failed opening a connector (%s); keeping the running config",
                type(exc).__name__,
            )
            await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)
            return
        from aggregator.app import build_store, store_namespace

        store = service.store
        new_namespace = store_namespace(settings)
        if old.cache != settings.cache or store.namespace != new_namespace:
            store = build_store(settings)
        retired_store = service.store if store is not service.store else None
        service.reconfigure(settings, connectors, store)
        self.app[TOKENS][:] = [t.get_secret_value().encode() for t in settings.auth.api_tokens]
        self._retire(list(kept.values()), retired_store, settings.server.deadline + 1.0)
        log.info(
            "config reloaded: %d connector(s), %d rebuilt, %d closed",
            len(connectors),
            len(opened),
            len(kept),
        )

    def _retire(
        self, connectors: list[Connector[Any]], store: ProfileStore | None, grace: float
    ) -> None:
        async def close_later() -> None:
            await asyncio.sleep(grace)
            for connector in connectors:
                try:
                    await connector.close()
                except Exception as exc:
                    log.warning("closing %s: %s", connector.name, type(exc).__name__)
            if store is not None:
                await store.close()

        if connectors or store is not None:
            task = asyncio.ensure_future(close_later())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def watch(self) -> None:
        """Reload whenever the file's modification time changes (checked every few seconds)."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            mtime = _mtime(self.path)
            if mtime is not None and mtime != self._mtime:
                log.info("config file changed; reloading")
                await self.reload()

    async def close(self) -> None:
        """Finish closing retired connectors now."""
        for task in list(self._retired):
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


async def reload_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: watch the config file and listen for SIGHUP while the app runs."""
    settings = app[SERVICE].settings
    if settings.source is None:
        yield
        return
    reloader = Reloader(app, Path(settings.source))
    app[RELOADER].append(reloader)
    loop = asyncio.get_running_loop()
    watcher = asyncio.ensure_future(reloader.watch())
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reloader.reload()))
    try:
        yield
    finally:
        if on_main_thread:
            loop.remove_signal_handler(signal.SIGHUP)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await reloader.close()
