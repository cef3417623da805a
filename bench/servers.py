"""Benchmark servers, each run as its own process on 127.0.0.1 with uvloop.

``python bench/servers.py bare BODY_FILE`` serves the bytes of BODY_FILE as JSON on every
GET: the baseline a cached hit is compared with. ``python bench/servers.py upstreams
0.02,0.05,0.08`` serves one CRM-like upstream per delay (in one process, one loop), counting
calls per email; ``GET /calls?email=E`` answers that count. Each prints ``READY <ports>``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path

import orjson
import uvloop
from aiohttp import web

JSON = "application/json"


def contact(email: str, index: int) -> dict[str, object]:
    """A plausible CRM contact: nested objects and lists, as a real upstream sends."""
    return {
        "id": f"c_{index}_{len(email)}",
        "plan": {"name": "Pro", "seats": 12, "interval": "month"},
        "tags": ["vip", "beta"],
        "signed_up_at": "2023-04-01T12:00:00Z",
        "orders": [
            {"number": 1001 + index, "total": 4900, "state": "paid"},
            {"number": 1002 + index, "total": 1900, "state": "refunded"},
        ],
        "health": {"score": 87, "trend": "up"},
    }


class Upstream:
    """One upstream: a fixed delay, a call count per email."""

    def __init__(self, index: int, delay: float) -> None:
        self.index = index
        self.delay = delay
        self.calls: Counter[str] = Counter()

    async def contacts(self, request: web.Request) -> web.Response:
        """GET /contacts?email=E: ``{"data": [contact]}`` after the delay."""
        email = request.query.get("email", "")
        self.calls[email] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        body = orjson.dumps({"data": [contact(email, self.index)]})
        return web.Response(body=body, content_type=JSON)

    async def count(self, request: web.Request) -> web.Response:
        """GET /calls?email=E: how many times E was asked for."""
        email = request.query.get("email", "")
        return web.Response(body=orjson.dumps({"calls": self.calls[email]}), content_type=JSON)


async def _listen(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def serve_bare(body_file: Path) -> None:
    """The baseline: a bare aiohttp handler answering pre-encoded JSON bytes."""
    body = body_file.read_bytes()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=JSON)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, port = await _listen(app)
    print(f"READY {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def serve_upstreams(delays: list[float]) -> None:
    """One upstream per delay, all in this process."""
    runners: list[web.AppRunner] = []
    ports: list[int] = []
    for index, delay in enumerate(delays):
        upstream = Upstream(index, delay)
        app = web.Application()
        app.router.add_get("/contacts", upstream.contacts)
        app.router.add_get("/calls", upstream.count)
        runner, port = await _listen(app)
        runners.append(runner)
        ports.append(port)
    print("READY " + ",".join(map(str, ports)), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> int:
    """Parse the command line and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bare = commands.add_parser("bare")
    bare.add_argument("body_file", type=Path)
    upstreams = commands.add_parser("upstreams")
    upstreams.add_argument("delays", help="seconds, comma separated")
    args = parser.parse_args()
    if args.command == "bare":
        uvloop.run(serve_bare(args.body_file))
    else:
        uvloop.run(serve_upstreams([float(d) for d in args.delays.split(",")]))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
