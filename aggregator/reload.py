"""Apply a changed config.yaml without a restart (SIGHUP, or the file's mtime changing).

A new runtime is built from the file, keeping the connectors (and the cache) whose settings
did not change; it is opened before the switch, and the parts left behind are closed once
requests that may still use them are done. A config that fails validation, or a connector
that fails to open, is logged and the running config stays.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from aggregator.config import Settings, load_settings
from aggregator.errors import ConfigError
from aggregator.keys import EXPOSED, LIVE
from aggregator.runtime import LiveRuntime, OpenError, build
from aggregator.server import accepts_public_token

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
    """Reloads the configuration from its file on demand.

    ``exposed``: the process listens beyond loopback, so a config accepting the public
    development token is refused (it is only ever served on loopback).
    """

    def __init__(self, live: LiveRuntime, path: Path, *, exposed: bool = False) -> None:
        self.live = live
        self.path = path
        self.exposed = exposed
        self._lock = asyncio.Lock()
        self._mtime = _mtime(path)

    async def reload(self) -> bool:
        """Load the file again and switch to it; False (and the old config kept) if refused."""
        async with self._lock:
            self._mtime = _mtime(self.path)
            try:
                settings = await asyncio.to_thread(load_settings, self.path)
            except ConfigError as exc:
                log.error("config reload refused, the running config stays:\n%s", exc)
                return False
            return await self._apply(settings)

    async def _apply(self, settings: Settings) -> bool:
        if self.exposed and accepts_public_token(settings):
            log.error(
                "config reload refused: it accepts the public development token 'dev-token' "
                "while the proxy listens beyond loopback; set GROOVE_API_TOKEN. "
                "The running config stays."
            )
            return False
        old = self.live.runtime
        for key in RESTART_ONLY:
            if getattr(old.settings.server, key) != getattr(settings.server, key):
                log.warning("server.%s changed: it takes effect at the next restart", key)
        new = build(settings, old)
        try:
            await self.live.start(new, grace=settings.server.deadline + 1.0)
        except OpenError as exc:
            log.error(
                "config reload failed opening %s (%s); keeping the running config",
                exc.name,
                type(exc.cause).__name__,
            )
            return False
        kept = set(old.connectors) & set(new.connectors)
        log.info(
            "config reloaded: %d connector(s), %d rebuilt, %d closed",
            len(new.connectors),
            len(new.connectors) - len(kept),
            len(old.connectors) - len(kept),
        )
        return True

    async def watch(self) -> None:
        """Reload whenever the file's modification time changes (checked every few seconds)."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            mtime = _mtime(self.path)
            if mtime is not None and mtime != self._mtime:
                log.info("config file changed; reloading")
                await self.reload()


RELOADER = web.AppKey("reloader", Reloader)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


async def reload_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: watch the config file and listen for SIGHUP while the app runs."""
    live = app[LIVE]
    source = live.runtime.settings.source
    if source is None:
        yield
        return
    reloader = Reloader(live, Path(source), exposed=app.get(EXPOSED, False))
    app[RELOADER] = reloader
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
