"""Hostile upstreams: a JSON API and PostgreSQL rows that are huge, deep, endless or wide.

``HostileApi`` answers ``GET /contacts?email=<kind>[+tag]@...`` with the body named by
the email's local part (``KINDS``); any other email gets a small, healthy contact.
``seed_hostile_rows`` fills a ``hostile`` table and names the queries a ``postgres``
connector runs against it. ``HostileStripe`` is a Stripe-shaped server answering
``GET /v1/customers?email=stripe_<kind>[+tag]@...`` with the hostile answer ``kind``
names (``STRIPE_KINDS``) and every other request as the (empty) account would.
"""

from __future__ import annotations

import zlib
from contextlib import AbstractAsyncContextManager
from typing import get_args

import orjson
from aiohttp import web

from tests.support.chaos import ALIKE_KEYS, StripeChaos, StripeKind, alike_record, padded_stream
from tests.support.chaos import STRIPE_KINDS as CHAOS_STRIPE_KINDS
from tests.support.fake_stripe import Hostile
from tests.support.net import LocalServer, started
from tests.support.pg import PgSchema

WIDE_KEYS = 60_000
DEEP_LEVELS = 1_000
BOMB_BYTES = 1024 * 1024 * 1024
ENDLESS_ROWS = 3_000_000
HUGE_TEXT_CHARS = 5 * 1024 * 1024

KINDS = ("alike", "wide", "deep", "huge", "endless", "bomb")
"""What the hostile API sends, by the local part of the email asked for."""

STRIPE_KINDS: tuple[StripeKind, ...] = tuple(
    kind for kind in CHAOS_STRIPE_KINDS if kind in get_args(Hostile)
)
"""What the hostile Stripe sends to ``stripe_<kind>@...``: the chaos kinds that are hostile
answers (huge, huge_declared, gzip_bomb, endless, trickle, cut, redirect)."""


def deep_json(levels: int = DEEP_LEVELS) -> bytes:
    """An object nested ``levels`` deep (orjson reads up to 1,024)."""
    return b'{"n":' * levels + b"1" + b"}" * levels


def _gzip_bomb(size: int = BOMB_BYTES) -> bytes:
    """A gzip body of about 1 MB that inflates to ``size`` bytes of one JSON string."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [packer.compress(b'{"padding": "')]
    block = b"x" * (1024 * 1024)
    parts += [packer.compress(block) for _ in range(size // len(block))]
    parts.append(packer.compress(b'"}'))
    parts.append(packer.flush())
    return b"".join(parts)


class HostileApi:
    """A CRM-like API whose answers are built to cost the proxy time and memory."""

    def __init__(self) -> None:
        self.url = ""
        self.served: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._server = LocalServer()
        self._bodies = {
            "alike": orjson.dumps(alike_record(ALIKE_KEYS)),
            "wide": orjson.dumps({f"f{i}": i for i in range(WIDE_KEYS)}),
            "deep": deep_json(),
        }
        self._bomb = _gzip_bomb()

    @property
    def template(self) -> str:
        """The URL template a ``rest`` connector uses for this API."""
        return f"{self.url}/contacts?email={{email}}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer with the body the email's local part names."""
        kind = request.query.get("email", "").partition("@")[0].partition("+")[0]
        if kind not in KINDS:
            return web.json_response({"tier": "gold"})
        self.served[kind] += 1
        if kind in self._bodies:
            return web.Response(body=self._bodies[kind], content_type="application/json")
        if kind == "bomb":
            headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
            return web.Response(body=self._bomb, headers=headers)
        return await padded_stream(request, b'{"padding": "', endless=kind == "endless")

    async def start(self) -> None:
        """Serve on 127.0.0.1 on a free port."""
        self.url = await self._server.serve([web.get("/contacts", self.handle)])

    async def close(self) -> None:
        """Stop serving; streams still running are cancelled."""
        await self._server.close()


def running_hostile_api() -> AbstractAsyncContextManager[HostileApi]:
    """A started HostileApi, closed on exit."""
    return started(HostileApi())


class HostileStripe(StripeChaos):
    """Hostile answers to the customer search of ``stripe_<kind>@...``; the rest is normal."""

    def next_kind(self, request: web.Request) -> StripeKind:
        """The kind the email's local part names (``ok`` for any other request)."""
        local = request.query.get("email", "").partition("@")[0].partition("+")[0]
        kind = local.removeprefix("stripe_")
        if local.startswith("stripe_") and kind in STRIPE_KINDS:
            return next(k for k in STRIPE_KINDS if k == kind)
        return "ok"


def running_hostile_stripe() -> AbstractAsyncContextManager[HostileStripe]:
    """A started HostileStripe (with its decoy origin), closed on exit."""
    return started(HostileStripe())


HOSTILE_QUERIES = {
    # alike+3@example.com reads the row of alike@example.com: many emails, one row each.
    "doc": "SELECT doc, note FROM hostile "
    "WHERE email = split_part(split_part($1, '@', 1), '+', 1) || '@example.com'",
    "rows": {
        "sql": "SELECT g AS n, repeat('x', 100) AS pad FROM generate_series(1, "
        f"CASE WHEN $1::text LIKE 'endless%' THEN {ENDLESS_ROWS} ELSE 2 END) AS g",
        "many": True,
    },
}
"""The queries of a ``postgres`` connector over the ``hostile`` table."""


async def seed_hostile_rows(schema: PgSchema) -> None:
    """A ``hostile`` table: one row per kind, keyed by ``<kind>@example.com``."""
    alike = orjson.dumps(alike_record(ALIKE_KEYS)).decode()
    await schema.execute("CREATE TABLE hostile (email text PRIMARY KEY, doc jsonb, note text)")
    await schema.execute(
        "INSERT INTO hostile VALUES ('alike@example.com', $1::text::jsonb, NULL)", alike
    )
    await schema.execute(
        "INSERT INTO hostile SELECT 'wide@example.com', "
        f"jsonb_object_agg('field_' || g, g), NULL FROM generate_series(1, {WIDE_KEYS}) g"
    )
    await schema.execute(
        "INSERT INTO hostile VALUES ('deep@example.com', $1::text::jsonb, NULL)",
        deep_json(200).decode(),
    )
    await schema.execute(
        "INSERT INTO hostile SELECT 'huge@example.com', jsonb_build_object('blob', t), t "
        f"FROM repeat('x', {HUGE_TEXT_CHARS}) AS t"
    )
