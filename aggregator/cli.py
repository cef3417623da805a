"""Command line: serve, check, preview, purge, demo, template."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from liquid.exceptions import LiquidError

from aggregator.collisions import collision_report
from aggregator.config import Settings, load_settings
from aggregator.emails import InvalidEmail, normalize_email, parse_email
from aggregator.errors import ConfigError, ConnectorError
from aggregator.groove import render_sidebar
from aggregator.logs import setup_logging
from aggregator.merge import Source
from aggregator.runtime import OpenError, build
from aggregator.service import ProfileService
from connectors.base import Connector


def default_config_path() -> str:
    """``$AGGREGATOR_CONFIG``, else ``./config.yaml``."""
    return os.environ.get("AGGREGATOR_CONFIG", "config.yaml")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="aggregator", description="Customer-profile aggregation proxy for Groove."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=default_config_path(),
        help="config file (default: $AGGREGATOR_CONFIG or ./config.yaml)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", parents=[common], help="run the proxy")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument(
        "--workers",
        type=_positive,
        help="processes serving the port (default: server.workers, 1)",
    )
    commands.add_parser(
        "check", parents=[common], help="validate the config and probe every enabled connector"
    )
    preview = commands.add_parser(
        "preview", parents=[common], help="fetch one profile, bypassing the cache"
    )
    preview.add_argument("email")
    preview.add_argument("--template", type=Path, help="a Liquid template to render as Groove")
    purge = commands.add_parser("purge", parents=[common], help="drop one cached profile")
    purge.add_argument("email")
    demo = commands.add_parser(
        "demo", help="run the proxy with local sample upstreams (no accounts, no Docker)"
    )
    demo.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    demo.add_argument(
        "--config",
        type=Path,
        help="run this config against the sample upstreams (default: the packaged demo config)",
    )
    demo.add_argument(
        "--database-url",
        help="PostgreSQL server for the demo's throwaway database "
        "(default: 127.0.0.1:5432 if it answers, else an embedded one)",
    )
    commands.add_parser(
        "template", help="print the Groove Custom Profile template that fits the shipped config"
    )
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError("must be between 1 and 256")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aggregator`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from aggregator.demo import run_demo

        return run_demo(args.port, args.database_url, args.config)
    if args.command == "template":
        from aggregator.preview import sample_template

        sys.stdout.write(sample_template())
        return 0
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"aggregator: configuration refused:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings, args.host, args.port, args.workers)
    if args.command == "check":
        return _run(check(settings))
    if args.command == "preview":
        template = args.template.read_text(encoding="utf-8") if args.template else None
        return _run(preview(settings, args.email, template))
    if args.command == "purge":
        return _run(purge(settings, args.email))
    raise AssertionError(args.command)


def _run(coro: Any) -> int:
    result: int = asyncio.run(coro)
    return result


def install_uvloop() -> bool:
    """Use uvloop when it is installed; True if it is."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def serve(
    settings: Settings,
    host: str | None,
    port: int | None,
    workers: int | None = None,
) -> int:
    """Run the proxy (``workers`` processes on one port) until SIGINT/SIGTERM, draining."""
    from aggregator.server import (
        ServeError,
        bind_socket,
        is_loopback,
        plan_listen,
        serve_socket,
    )

    setup_logging(settings.logging.level, settings.logging.format)
    log = logging.getLogger("aggregator")
    count = workers or settings.server.workers
    try:
        plan = plan_listen(settings, host, port, os.environ)
        for warning in plan.warnings:
            log.warning("%s", warning)
        sock = bind_socket(plan.host, plan.port)
    except ServeError as exc:
        print(f"aggregator: {exc}", file=sys.stderr)
        return exc.exit_code
    loop_kind = "uvloop" if _has_uvloop() else "asyncio"
    names = ", ".join(name for name, _ in settings.enabled_connectors()) or "none"
    shown_host = f"[{plan.host}]" if ":" in plan.host else plan.host
    log.info(
        "serving on http://%s:%d%s (%s, %s, cache %s, connectors: %s)",
        shown_host,
        plan.port,
        settings.server.path,
        f"{count} workers" if count > 1 else "1 process",
        loop_kind,
        settings.cache.url.split("://")[0],
        names,
    )
    if count > 1:
        from aggregator.workers import run_workers

        return run_workers(settings, sock.detach(), count, exposed=not is_loopback(plan.host))
    install_uvloop()
    from aggregator.app import create_app

    with sock:
        asyncio.run(serve_socket(create_app(settings), settings, sock))
    return 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


async def check(settings: Settings) -> int:
    """Validate and probe: one line per part, non-zero exit on any problem."""
    problems = 0
    print(f"config ok: {settings.source}")
    runtime = build(settings)
    failed: dict[str, Exception] = {}
    async with aiohttp.ClientSession() as session, runtime.opened(session, failed=failed):
        ok, detail = await runtime.store.ready()
        print(f"{'ok  ' if ok else 'FAIL'} cache: {detail}")
        problems += not ok
        if not runtime.connectors:
            print("note: no connector is enabled")
        for connector in runtime.connectors:
            label = f"{connector.name} ({connector.settings.type})"
            started = time.perf_counter()
            try:
                if connector.name in failed:
                    raise failed[connector.name]
                async with asyncio.timeout(max(connector.settings.timeout, 5.0)):
                    await connector.check()
            except ConnectorError as exc:
                problems += 1
                print(f"FAIL {label}: {exc}")
            except TimeoutError:
                problems += 1
                print(f"FAIL {label}: timed out")
            except Exception as exc:
                problems += 1
                print(f"FAIL {label}: {type(exc).__name__}")
            else:
                elapsed = (time.perf_counter() - started) * 1000
                print(f"ok   {label} {elapsed:.0f} ms")
    for line in _collisions(settings, runtime.connectors):
        print(line)
    print("all checks passed" if not problems else f"{problems} problem(s) found")
    return 1 if problems else 0


def _collisions(settings: Settings, connectors: Sequence[Connector[Any]]) -> list[str]:
    """The keys connectors sharing a prefix can both produce, and who keeps each."""
    sources = [Source(c.name, c.prefix) for c in connectors]
    shapes = {c.name: c.declared_shape() for c in connectors}
    return collision_report(sources, shapes, max_list_items=settings.merge.max_list_items)


async def preview(settings: Settings, raw_email: str, template_text: str | None) -> int:
    """Fetch one profile now and print it, each connector's outcome, and the rendered template."""
    try:
        email = parse_email(raw_email)
    except InvalidEmail as exc:
        print(f"aggregator: {exc}", file=sys.stderr)
        return 2
    runtime = build(settings, cache=False)
    try:
        async with aiohttp.ClientSession() as session, runtime.opened(session):
            answer = await ProfileService(runtime).preview(email)
    except OpenError as exc:
        print(f"aggregator: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(answer.profile, option=orjson.OPT_INDENT_2).decode())
    print("\nconnectors:", file=sys.stderr)
    for outcome in answer.outcomes:
        keys = len(answer.contributed.get(outcome.name, []))
        detail = f" ({outcome.detail})" if outcome.detail else ""
        print(
            f"  {outcome.name:<12} {outcome.status:<11} {outcome.elapsed * 1000:7.1f} ms  "
            f"{keys} keys{detail}",
            file=sys.stderr,
        )
        for step, result in outcome.steps.items():
            why = f" ({result.detail})" if result.detail else ""
            print(
                f"    then {step:<7} {result.status:<11} {result.elapsed * 1000:7.1f} ms{why}",
                file=sys.stderr,
            )
    if template_text is not None:
        try:
            rendered = render_sidebar(template_text, answer.profile or {}, email)
        except LiquidError as exc:
            print(f"\ntemplate error: {exc}", file=sys.stderr)
            return 1
        print("\nrendered template:", file=sys.stderr)
        print(rendered)
    return 0


async def purge(settings: Settings, raw_email: str) -> int:
    """Drop one email's cached profile."""
    try:
        email = normalize_email(raw_email)
    except InvalidEmail as exc:
        print(f"aggregator: {exc}", file=sys.stderr)
        return 2
    runtime = build(settings, connectors=False)
    if not runtime.store.shared:
        path = settings.server.path.rstrip("/")
        print(
            "cache is in-process (memory://): only the running server holds profiles; "
            f"drop one there with POST {path}/purge?email=...&api_token=... "
            "(with --workers, each worker has its own cache: use Redis to purge them all)"
        )
        return 0
    async with aiohttp.ClientSession() as session, runtime.opened(session):
        purged = await runtime.store.purge(email, time.time())
    if not purged:
        print("aggregator: the cache could not be reached", file=sys.stderr)
        return 1
    print("purged")
    return 0
