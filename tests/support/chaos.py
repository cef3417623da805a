"""A chaos upstream: a JSON HTTP API that, per request, answers or injects a fault.

Usable as the URL of a ``rest`` connector (``ChaosUpstream.template``, ``select: data[0]``).
Each request draws its behaviour from a seeded random (``weights``) unless a ``script``
of kinds is queued; ``counts`` says how many of each kind were served.

``StripeChaos`` is the same for a ``stripe`` connector: the fake Stripe account of
``tests/support/fake_stripe.py``, each request answered normally or with a Stripe error
or one of its hostile answers (huge, gzip bomb, endless, trickling, cut short, redirect).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import orjson
from aiohttp import web

from aggregator.samples.stripe_api import Handler
from tests.support.fake_stripe import Failure, FakeStripe, ScriptedStripe, gzip_bomb
from tests.support.net import LocalServer, started

Kind = Literal[
    "ok", "delay", "reset", "http500", "http429", "bad_json", "endless", "huge", "alike_keys"
]
KINDS: tuple[Kind, ...] = get_args(Kind)
FAULTS: tuple[Kind, ...] = tuple(k for k in KINDS if k != "ok")
HUGE_BYTES = 50 * 1024 * 1024
ALIKE_KEYS = 60_000
_CHUNK = b"x" * (64 * 1024)
_MARKS = "!#%&*+,-./"


def alike_keys(count: int = ALIKE_KEYS, base: str = "a") -> list[str]:
    """``count`` distinct keys that all sanitize to ``base``: ``a!``, ``a#``, ... ``a#!&``.

    Each is ``base`` followed by the digits of its index written with punctuation, the
    custom-field names a CRM user could type; merged naively they cost O(n^2) renames.
    """
    table = str.maketrans("0123456789", _MARKS)
    return [base + str(index).translate(table) for index in range(count)]


def alike_record(count: int = ALIKE_KEYS) -> dict[str, int]:
    """One contact whose ``count`` keys all sanitize to ``a`` (about 10 bytes each as JSON)."""
    return {key: index for index, key in enumerate(alike_keys(count))}


def default_fields(email: str) -> dict[str, Any]:
    """The contact a healthy answer carries: a constant tier and a value derived from the email."""
    return {"tier": "gold", "letters": len(email)}


_ALIKE_BODY = orjson.dumps({"data": [alike_record()]})


@dataclass
class ChaosUpstream:
    """``GET /contacts?email=E`` -> ``{"data": [fields]}``, or a fault, chosen per request."""

    weights: Mapping[Kind, float] = field(default_factory=lambda: {"ok": 1.0})
    seed: int = 0
    delay: float = 5.0
    retry_after: tuple[str, ...] = ("0", "0.05", "3")
    counts: Counter[str] = field(default_factory=Counter)
    seen: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        self._random = random.Random(self.seed)
        self._script: deque[Kind] = deque()
        self._server = LocalServer()

    @property
    def template(self) -> str:
        """The URL template a ``rest`` connector uses for this upstream."""
        return f"{self.url}/contacts?email={{email}}"

    @property
    def faults(self) -> int:
        """Requests answered with a fault of any kind."""
        return sum(n for kind, n in self.counts.items() if kind != "ok")

    @property
    def requests(self) -> int:
        """Requests received."""
        return sum(self.counts.values())

    def script(self, kinds: Iterable[Kind]) -> None:
        """Serve these kinds, in order, to the next requests (then draw from ``weights`` again)."""
        self._script.extend(kinds)

    def set_weights(self, weights: Mapping[Kind, float]) -> None:
        """Change the mix of kinds drawn from now on."""
        self.weights = dict(weights)

    def next_kind(self) -> Kind:
        """The kind the next request gets."""
        if self._script:
            return self._script.popleft()
        kinds = list(self.weights)
        return self._random.choices(kinds, weights=[self.weights[k] for k in kinds])[0]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request with the next kind."""
        email = request.query.get("email", "")
        self.seen.append((request.path, list(request.query.items())))
        kind = self.next_kind()
        self.counts[kind] += 1
        return await self._answer(kind, email, request)

    async def _answer(self, kind: Kind, email: str, request: web.Request) -> web.StreamResponse:
        body = orjson.dumps({"data": [default_fields(email)]})
        if kind == "ok":
            return web.Response(body=body, content_type="application/json")
        if kind == "delay":
            await asyncio.sleep(self.delay)
            return web.Response(body=body, content_type="application/json")
        if kind == "reset":
            transport = request.transport
            if transport is not None:
                transport.abort()
            await asyncio.Event().wait()  # the lost connection cancels this handler
        if kind == "http500":
            return web.json_response({"error": "injected"}, status=500)
        if kind == "http429":
            headers = {"Retry-After": self._random.choice(self.retry_after)}
            return web.json_response({"error": "slow down"}, status=429, headers=headers)
        if kind == "bad_json":
            return web.Response(body=b'{"data": [{"tier": "go', content_type="application/json")
        if kind == "alike_keys":
            return web.Response(body=_ALIKE_BODY, content_type="application/json")
        return await padded_stream(request, b'{"data": [{"padding": "', endless=kind == "endless")

    async def start(self) -> str:
        """Serve on 127.0.0.1 on a free port; returns the base URL."""
        self.url = await self._server.serve([web.get("/contacts", self.handle)])
        return self.url

    async def close(self) -> None:
        """Stop serving; handlers still delaying or streaming are cancelled."""
        await self._server.close()


async def padded_stream(
    request: web.Request, opening: bytes, *, endless: bool
) -> web.StreamResponse:
    """A JSON body that opens a string (``opening`` ends with its quote) and pads it with
    ``HUGE_BYTES`` (declared as the length), or for ever; until the client hangs up."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    if not endless:
        response.content_length = HUGE_BYTES
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await response.write(opening)
        sent = 0
        while endless or sent < HUGE_BYTES:
            await response.write(_CHUNK)
            sent += len(_CHUNK)
    return response


def running_chaos(
    weights: Mapping[Kind, float] | None = None, **options: Any
) -> AbstractAsyncContextManager[ChaosUpstream]:
    """A started ChaosUpstream, closed on exit."""
    return started(ChaosUpstream(weights=dict(weights or {"ok": 1.0}), **options))


# -- a Stripe-shaped chaos upstream ------------------------------------------------------

StripeKind = Literal[
    "ok",
    "http429",
    "http500",
    "huge",
    "huge_declared",
    "gzip_bomb",
    "endless",
    "trickle",
    "cut",
    "redirect",
]
STRIPE_KINDS: tuple[StripeKind, ...] = get_args(StripeKind)


class StripeChaos(ScriptedStripe):
    """The fake Stripe account, answering each request normally or with a fault.

    Each request draws a kind from seeded ``weights``: ``ok`` (the account's real answer),
    ``http429``/``http500`` (Stripe's error bodies) or one of ``ScriptedStripe``'s hostile
    answers (``redirect`` points at ``decoy``, another origin, which must never be asked
    anything). ``counts`` says how many of each kind were served. A subclass may choose
    the kind otherwise (``next_kind``).
    """

    def __init__(
        self,
        weights: Mapping[StripeKind, float] | None = None,
        seed: int = 0,
        key: str = "sk_test_chaos",
    ) -> None:
        super().__init__(key)
        self.weights: dict[StripeKind, float] = dict(weights or {"ok": 1.0})
        unknown = set(self.weights) - set(STRIPE_KINDS)
        if unknown:
            raise ValueError(f"unknown Stripe fault kinds: {sorted(unknown)}")
        self.counts: Counter[str] = Counter()
        self.decoy = FakeStripe(key)
        self._random = random.Random(seed)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the account and the decoy; make the gzip bomb before any client waits."""
        gzip_bomb()
        await self.decoy.start(host)
        return await super().start(host, port)

    async def close(self) -> None:
        """Stop serving, the decoy too."""
        await super().close()
        await self.decoy.close()

    @property
    def faults(self) -> int:
        """Requests answered with a fault of any kind."""
        return sum(n for kind, n in self.counts.items() if kind != "ok")

    def set_weights(self, weights: Mapping[StripeKind, float]) -> None:
        """Change the mix of kinds drawn from now on."""
        self.weights = dict(weights)

    def next_kind(self, request: web.Request) -> StripeKind:
        """The kind this request gets."""
        kinds = list(self.weights)
        return self._random.choices(kinds, weights=[self.weights[k] for k in kinds])[0]

    def middlewares(self) -> list[Any]:
        """The scripted stripe's middlewares, then the draw (innermost, once authorized)."""
        return [*super().middlewares(), self._chaos]

    @web.middleware
    async def _chaos(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        kind = self.next_kind(request)
        self.counts[kind] += 1
        if kind == "ok":
            return await handler(request)
        if kind == "http429":
            failure = Failure(429, None, {"Retry-After": "0"}, "rate_limit_error")
        elif kind == "http500":
            failure = Failure(500, None)
        else:
            location = f"{self.decoy.url}/v1/customers"
            failure = Failure(200, None, hostile=kind, location=location)
        return await self.injected(request, failure)


def running_stripe_chaos(
    weights: Mapping[StripeKind, float] | None = None, seed: int = 0
) -> AbstractAsyncContextManager[StripeChaos]:
    """A started StripeChaos (an empty account), closed on exit."""
    return started(StripeChaos(weights, seed))
