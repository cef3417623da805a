"""The server process: where it may listen, the socket, the HTTP protocol guards, one process.

Every process that serves the port (``aggregator serve`` alone, or each of its
``--workers``, see ``aggregator.workers``) runs the app through ``ProxyRunner``, whose
connections are ``GuardedRequestHandler``: a client must send a whole request head within
``server.header_timeout`` (else 408 and the connection is closed), and a malformed request
gets a fixed JSON body instead of aiohttp's text, which echoes the request line back.

Before anything listens, ``plan_listen`` decides the address: the shipped config falls back
to the public development token ``dev-token`` when ``GROOVE_API_TOKEN`` is unset, and with it
the proxy never listens beyond loopback.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from aggregator.config import Settings
from aggregator.keys import EXPOSED

log = logging.getLogger("aggregator.server")

# The shipped config's fallback when GROOVE_API_TOKEN is unset: printed in the README, so
# anyone may send it. With it the proxy listens on loopback only.
PUBLIC_TOKENS = frozenset({"dev-token"})
# Tokens written in this project's files or guessable: accepted, with a warning.
WEAK_TOKENS = frozenset(
    {"demo-token", "change-me", "changeme", "secret", "token", "test", "password", "groove"}
)
MIN_TOKEN_LENGTH = 16
LOOPBACK = "127.0.0.1"
BACKLOG = 1024
KEEPALIVE_SECONDS = 75.0  # idle keep-alive connections: longer than load balancers' 60 s


class ServeError(Exception):
    """The proxy cannot start; the message says why and what to do."""

    exit_code = 1


class PortInUse(ServeError):
    """Another process listens on the port."""


class Refused(ServeError):
    """Listening as asked would expose the proxy with a public token."""

    exit_code = 2


@dataclass(frozen=True)
class ListenPlan:
    """Where to listen, and the warnings to log before doing so."""

    host: str
    port: int
    warnings: list[str] = field(default_factory=list)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def accepts_public_token(settings: Settings) -> bool:
    """True when ``settings`` accept a public token (the shipped config's ``dev-token``)."""
    return any(t.get_secret_value() in PUBLIC_TOKENS for t in settings.auth.api_tokens)


def token_warnings(settings: Settings) -> list[str]:
    """A warning for each accepted token that is public, well known or short."""
    warnings = []
    for index, secret in enumerate(settings.auth.api_tokens):
        token = secret.get_secret_value()
        where = f"auth.api_tokens[{index}]"
        if token in PUBLIC_TOKENS:
            warnings.append(
                f"{where} is the public development token {token!r}: set GROOVE_API_TOKEN "
                "to your Groove account's API token"
            )
        elif token.lower() in WEAK_TOKENS:
            warnings.append(f"{where} is the well-known token {token!r}: use a random one")
        elif len(token) < MIN_TOKEN_LENGTH:
            warnings.append(f"{where} is shorter than {MIN_TOKEN_LENGTH} characters")
    return warnings


def plan_listen(
    settings: Settings,
    cli_host: str | None,
    cli_port: int | None,
    environ: Mapping[str, str],
) -> ListenPlan:
    """The address to listen on; ``Refused`` when asked to expose a public token.

    With a public token (``dev-token``) accepted, an explicit request to listen beyond
    loopback (``--host``, or ``$HOST`` which the shipped config reads) is refused; a
    non-loopback host that only comes from a config file falls back to 127.0.0.1.
    """
    port = cli_port or settings.server.port
    host = cli_host or settings.server.host
    warnings = token_warnings(settings)
    if not accepts_public_token(settings) or is_loopback(host):
        return ListenPlan(host, port, warnings)
    asked = cli_host if cli_host is not None else environ.get("HOST")
    if asked and not is_loopback(asked):
        source = "--host" if cli_host is not None else "HOST"
        raise Refused(
            f"refusing to listen on {host} ({source}) while the public development token "
            "'dev-token' is accepted: set GROOVE_API_TOKEN to your Groove account's API token "
            "(or listen on 127.0.0.1)"
        )
    warnings.append(
        f"server.host is {host} but no API token is configured (GROOVE_API_TOKEN is unset): "
        f"listening on {LOOPBACK} only"
    )
    return ListenPlan(LOOPBACK, port, warnings)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; ``PortInUse`` or ``ServeError`` saying why not."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} is in use (on {host}): stop what listens there, "
                "or choose another port with --port"
            ) from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


# -- HTTP protocol guards ------------------------------------------------------------

_MALFORMED = orjson.dumps({"error": "malformed request"})
_INTERNAL = orjson.dumps({"error": "internal error"})
_TIMEOUT_BODY = orjson.dumps({"error": "the request head was not received in time"})
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_TIMEOUT_BODY)
) + _TIMEOUT_BODY


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with a request-head deadline and JSON error bodies."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._between_requests = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the clock for the first request head."""
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; stop the clock once a whole head is in, start it on a new one."""
        # aiohttp counts a request when its head is parsed (the body may still stream in).
        parsed_before = self._request_count
        super().data_received(data)
        if self._request_count != parsed_before:
            self._disarm()
        elif data and self._between_requests:
            self._arm()

    def log_access(self, request: BaseRequest, response: web.StreamResponse, time: Any) -> None:
        """A response went out: the next bytes on this connection start a new head."""
        self._between_requests = True
        if self.access_logger is not None:  # the proxy logs requests itself: normally None
            super().log_access(request, response, time)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Drop the clock with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A fixed JSON body: aiohttp's own one quotes the request line, token included."""
        super().handle_error(request, status, exc, message)  # logs (redacted), checks output
        body = _INTERNAL if status >= 500 else _MALFORMED
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response

    def _arm(self) -> None:
        self._between_requests = False
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(self._header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        log.debug("closed a connection that sent no whole request head in time")
        transport.write(_TIMEOUT_RESPONSE)
        self.force_close()


class GuardedServer(web.Server):
    """aiohttp's protocol factory, making ``GuardedRequestHandler`` connections."""

    header_timeout: float = 10.0

    def __call__(self) -> RequestHandler:
        """One protocol instance per accepted connection."""
        return GuardedRequestHandler(
            self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs
        )


class ProxyRunner(web.AppRunner):
    """``AppRunner`` for the proxy: guarded connections, drain on stop, a line when stopped."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(
            app,
            access_log=None,
            shutdown_timeout=settings.server.drain_timeout,
            keepalive_timeout=KEEPALIVE_SECONDS,
        )
        self._header_timeout = settings.server.header_timeout

    async def _make_server(self) -> web.Server:
        # aiohttp builds its Server in Application._make_handler (app freeze, handler_args);
        # only the protocol class differs, so the same object changes class.
        server = await super()._make_server()
        server.__class__ = GuardedServer
        assert isinstance(server, GuardedServer)
        server.header_timeout = self._header_timeout
        return server


async def serve_socket(app: web.Application, settings: Settings, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGINT or SIGTERM, then drain in-flight requests."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app[EXPOSED] = not is_loopback(str(sock.getsockname()[0]))
    runner = ProxyRunner(app, settings)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        await stop.wait()
        log.info(
            "stopping: no new connections, in-flight requests get up to %g s",
            settings.server.drain_timeout,
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log.info("stopped")
