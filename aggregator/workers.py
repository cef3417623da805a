"""``aggregator serve --workers N``: N processes on one port, run by gunicorn's aiohttp worker.

The parent binds the port itself (so a port in use is one clear line, before anything forks)
and hands the socket to gunicorn's arbiter (``bind = fd://N``), which forks N workers of
aiohttp's ``GunicornUVLoopWebWorker``. Each worker loads the config file and serves the app
through ``ProxyRunner``, so a worker applies every protection a single process does. The
workers share the listening socket: the kernel hands each new connection to one of them.

Signals to the parent process:

- ``SIGTERM``: graceful stop of all. The socket closes, every worker lets its in-flight
  requests finish (``server.drain_timeout``), and the parent exits 0 once all are gone.
- ``SIGINT`` (Ctrl-C): gunicorn's quick shutdown; aiohttp still drains in-flight requests.
- ``SIGHUP``: forwarded to every worker, which reloads the config file in place as a single
  process does: unchanged connectors keep their pools, the in-process cache survives, and a
  config that fails validation is logged while the running one stays. (gunicorn's own HUP
  would replace every worker, losing their caches, and stop the server on a bad config.)
- A worker that dies is replaced; the new one loads the config file then, or keeps the one
  the parent started with if the file no longer validates.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from aggregator.app import create_app
from aggregator.config import Settings, load_settings
from aggregator.errors import ConfigError
from aggregator.keys import EXPOSED
from aggregator.server import KEEPALIVE_SECONDS, ProxyRunner, accepts_public_token

log = logging.getLogger("aggregator.server")

# gunicorn's heartbeat: a worker whose event loop is stuck this long is killed and replaced.
WORKER_TIMEOUT = 30
EXTRA_GRACE = 5.0  # seconds past drain_timeout before gunicorn kills a draining worker


class _GunicornLog(glogging.Logger):
    """gunicorn's own messages through the proxy's log handler and format; no access log."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
        self.error_log.propagate = True
        self.access_log.propagate = False
        if not any(isinstance(f, _DoubleCloseFilter) for f in self.error_log.filters):
            self.error_log.addFilter(_DoubleCloseFilter())


class _DoubleCloseFilter(logging.Filter):
    """aiohttp closes a worker's listening socket on stop; gunicorn then reports EBADF."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for gunicorn's note about closing the already closed socket."""
        return not record.getMessage().startswith("Error while closing socket")


class _Arbiter(Arbiter):
    """gunicorn's arbiter, with SIGHUP meaning "every worker reloads its config"."""

    def handle_hup(self) -> None:
        log.info("SIGHUP: every worker reloads the config file")
        self.kill_workers(signal.SIGHUP)


def _worker_class() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "aiohttp.GunicornWebWorker"
    return "aiohttp.GunicornUVLoopWebWorker"


def _tmp_dir() -> str | None:
    """Where gunicorn keeps its heartbeat files: memory when possible (read-only root fs)."""
    shm = "/dev/shm"  # noqa: S108
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


class ProxyApplication(BaseApplication):
    """gunicorn's custom-application interface around the proxy."""

    def __init__(self, settings: Settings, fd: int, workers: int, *, exposed: bool) -> None:
        self._settings = settings
        self._fd = fd
        self._workers = workers
        self._exposed = exposed
        super().__init__(prog="aggregator serve")

    def load_config(self) -> None:
        """gunicorn's settings, all from the proxy's config and the command line."""
        server = self._settings.server
        options: dict[str, Any] = {
            "bind": [f"fd://{self._fd}"],
            "workers": self._workers,
            "worker_class": _worker_class(),
            "graceful_timeout": math.ceil(server.drain_timeout + EXTRA_GRACE),
            "timeout": WORKER_TIMEOUT,
            "keepalive": math.ceil(KEEPALIVE_SECONDS),
            "accesslog": None,
            "errorlog": "-",
            "loglevel": self._settings.logging.level.lower(),
            "logger_class": _GunicornLog,
            "proc_name": "aggregator",
            "worker_tmp_dir": _tmp_dir(),
            "on_exit": _on_exit,
            # gunicorn >= 25 opens a control socket in $HOME by default: nothing to control.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Callable[[], Awaitable[web.AppRunner]]:  # type: ignore[override]
        """The app factory every worker calls after the fork."""
        started_with = self._settings
        exposed = self._exposed

        async def make_runner() -> web.AppRunner:
            settings = started_with
            if started_with.source is not None:
                try:
                    settings = load_settings(started_with.source)
                except ConfigError as exc:
                    log.error("config refused, this worker keeps the one it started with:\n%s", exc)
            if exposed and accepts_public_token(settings):
                log.error(
                    "config refused: it accepts the public development token 'dev-token' while "
                    "the proxy listens beyond loopback; this worker keeps the one it started with"
                )
                settings = started_with
            app = create_app(settings)
            app[EXPOSED] = exposed
            return ProxyRunner(app, settings)

        return make_runner

    def run(self) -> None:
        """Run the arbiter until SIGTERM/SIGINT (exits the process)."""
        _Arbiter(self).run()


def _on_exit(arbiter: Any) -> None:
    log.info("stopped: all workers have exited")


def run_workers(settings: Settings, fd: int, workers: int, *, exposed: bool) -> int:
    """Serve the listening socket ``fd`` (gunicorn owns it now) with ``workers`` processes.

    ``exposed``: the socket listens beyond loopback (see ``aggregator.server``).
    """
    try:
        ProxyApplication(settings, fd, workers, exposed=exposed).run()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0
