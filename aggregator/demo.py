"""``aggregator demo``: the real server with local sample upstreams, no accounts, no Docker.

Everything runs in one event loop: a Stripe-shaped API and a CRM on free loopback ports,
sample rows in a throwaway PostgreSQL database (see ``aggregator.samples.database``), and the
proxy itself, configured through the same YAML path an operator uses: the packaged
``aggregator/samples/demo.yaml``, or the file given with ``--config``. Either way the demo
sets the variables that config reads (``demo_environment``) and listens on 127.0.0.1 only;
the config file is not watched for changes. On exit it drops the database it created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from aiohttp import web

from aggregator.app import create_app
from aggregator.config import Settings, parse_settings
from aggregator.errors import ConfigError
from aggregator.logs import setup_logging
from aggregator.samples import SAMPLE_EMAILS
from aggregator.samples.crm import start_sample_crm
from aggregator.samples.database import open_sample_database
from aggregator.samples.stripe_api import start_fake_stripe
from aggregator.server import ProxyRunner

HOST = "127.0.0.1"
# Fixed, public credentials of the demo's own loopback servers: printed on purpose.
DEMO_TOKEN = "demo-token"  # noqa: S105
STRIPE_KEY = "sk_test_demo"
CRM_TOKEN = "demo-crm-token"  # noqa: S105
DEMO_CONFIG = "demo.yaml"  # package data in aggregator/samples


class DemoError(Exception):
    """The demo could not start; the message says why and what to do."""


def demo_environment(stripe_url: str, crm_url: str, dsn: str, port: int) -> dict[str, str]:
    """The variables the demo sets for its config, over the process environment."""
    return {
        "GROOVE_API_TOKEN": DEMO_TOKEN,
        "HOST": HOST,
        "PORT": str(port),
        "REDIS_URL": "memory://",
        "STRIPE_ENABLED": "true",
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": stripe_url,
        "DB_ENABLED": "true",
        "DATABASE_URL": dsn,
        "CRM_ENABLED": "true",
        "CRM_URL": crm_url,
        "CRM_TOKEN": CRM_TOKEN,
    }


def demo_settings(variables: Mapping[str, str], config: Path | None = None) -> Settings:
    """The demo's config (``config``, else the packaged one) read with ``variables`` set."""
    if config is None:
        source = f"<{DEMO_CONFIG}>"
        text = resources.files("aggregator.samples").joinpath(DEMO_CONFIG).read_text("utf-8")
    else:
        source = str(config)
        try:
            text = config.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{config}: cannot read config file: {exc.strerror}"]) from None
    settings = parse_settings(text, source=source, env={**os.environ, **variables})
    server = settings.server.model_copy(update={"host": HOST, "port": int(variables["PORT"])})
    # No reload: reading the file again would not see the demo's variables.
    return settings.model_copy(update={"server": server, "source": None})


@dataclass
class Demo:
    """A running demo: the proxy's base URL, its token, and how to stop everything."""

    url: str
    token: str
    settings: Settings
    upstreams: dict[str, str]
    _stack: contextlib.AsyncExitStack = field(repr=False)

    @property
    def curl_line(self) -> str:
        """A ready-to-paste request for the first sample customer."""
        path = self.settings.server.path
        query = f"email={SAMPLE_EMAILS[0]}&api_token={self.token}"
        return f"curl '{self.url}{path}?{query}'"

    @property
    def preview_url(self) -> str:
        """The preview page for the first sample customer, token included."""
        return f"{self.url}/preview?api_token={self.token}&email={SAMPLE_EMAILS[0]}"

    async def close(self) -> None:
        """Stop the proxy, then every sample upstream; drop the throwaway database."""
        await self._stack.aclose()


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise DemoError(f"cannot listen on {HOST}:{port} ({exc.strerror}); try --port") from None
    sock.setblocking(False)
    return sock


async def start_demo(
    port: int = 0, *, database_url: str | None = None, config: Path | None = None
) -> Demo:
    """Start the sample upstreams and the proxy on 127.0.0.1:``port`` (0: a free port).

    ``database_url`` names the PostgreSQL server to make the throwaway database on;
    ``config`` replaces the packaged demo config.
    """
    async with contextlib.AsyncExitStack() as stack:
        sock = _bind(port)
        stack.callback(sock.close)
        bound = int(sock.getsockname()[1])
        stripe = await start_fake_stripe(seed=True, host=HOST, key=STRIPE_KEY)
        stack.push_async_callback(stripe.close)
        crm = await start_sample_crm(HOST, token=CRM_TOKEN)
        stack.push_async_callback(crm.close)
        try:
            database = await open_sample_database(database_url)
        except ImportError:
            raise DemoError(
                "no PostgreSQL: nothing answers at 127.0.0.1:5432, --database-url is not given, "
                "and the embedded server needs the 'pgserver' package (pip install pgserver)"
            ) from None
        except (OSError, ConnectionError) as exc:
            raise DemoError(f"cannot prepare the sample database: {type(exc).__name__}") from None
        stack.push_async_callback(database.close)
        variables = demo_environment(stripe.url, crm.url, database.dsn, bound)
        try:
            settings = demo_settings(variables, config)
        except ConfigError as exc:
            raise DemoError(f"configuration refused:\n{exc}") from None
        runner = ProxyRunner(create_app(settings), settings)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.SockSite(runner, sock).start()
        upstreams = {
            "stripe": f"Stripe-shaped API at {stripe.url}",
            "crm": f"CRM at {crm.url}",
            "db": f"{database.origin}, throwaway {database.kind} {database.name}".rstrip(),
        }
        demo = Demo(f"http://{HOST}:{bound}", DEMO_TOKEN, settings, upstreams, stack.pop_all())
    return demo


def banner(demo: Demo) -> str:
    """What the demo prints once it is ready."""
    upstreams = "\n".join(f"    {name:<7} {where}" for name, where in demo.upstreams.items())
    return (
        f"Groove profile aggregator demo: listening on {demo.url}  (Ctrl-C to stop)\n\n"
        f"  sample upstreams:\n{upstreams}\n"
        f"  sample customers: {', '.join(SAMPLE_EMAILS)}\n\n"
        f"Try it:\n  {demo.curl_line}\n\n"
        f"Preview page (the sidebar as Groove renders it):\n  {demo.preview_url}\n"
    )


async def serve_demo(port: int, database_url: str | None = None, config: Path | None = None) -> int:
    """Run the demo until SIGINT or SIGTERM; the exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.ensure_future(start_demo(port, database_url=database_url, config=config))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return 130
        try:
            demo = starting.result()
        except DemoError as exc:
            stopping.cancel()
            print(f"aggregator demo: {exc}", file=sys.stderr)
            return 1
        print(banner(demo), flush=True)
        try:
            await stopping
        finally:
            print("\nstopping the demo...", file=sys.stderr, flush=True)
            await demo.close()
        print("demo stopped", file=sys.stderr)
        return 0
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run_demo(port: int = 8080, database_url: str | None = None, config: Path | None = None) -> int:
    """Blocking entry point of ``aggregator demo``."""
    setup_logging("INFO", "text")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    return asyncio.run(serve_demo(port, database_url, config))
