"""The runtime: what a configuration becomes (connectors, store, tokens), built and opened once.

``build(settings)`` makes one without I/O; ``async with runtime.opened(session)`` opens the
store and the connectors in order and closes them in reverse, and a failing ``open()``
closes what was already opened. ``build(new_settings, previous=runtime)`` keeps the
connectors (and the store) whose settings did not change: they are shared, already open,
and closed only when the last opened runtime holding them is closed. The app serves from
a ``LiveRuntime``, which swaps a whole runtime on reload and retires the old one later.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from aggregator.config import CacheSettings, Settings
from aggregator.errors import AggregatorError
from aggregator.query import AcceptedQueries
from aggregator.registry import get_connector_type
from aggregator.store import ProfileStore
from connectors.base import Connector

log = logging.getLogger("aggregator.runtime")

Step = Callable[[], Awaitable[None]]


class OpenError(AggregatorError):
    """A part of the runtime (a connector, the cache) failed to open; nothing stays open."""

    def __init__(self, name: str, cause: Exception) -> None:
        super().__init__(f"opening {name} failed: {type(cause).__name__}")
        self.name = name
        self.cause = cause


class Leases:
    """How many opened runtimes hold each part: the first one opens it, the last one closes it."""

    def __init__(self) -> None:
        self._holders: dict[object, int] = {}

    async def take(self, part: object, open_part: Callable[[], Awaitable[None]]) -> None:
        """Hold ``part``, opening it if nobody held it."""
        count = self._holders.get(part, 0)
        if count == 0:
            await open_part()
        self._holders[part] = count + 1

    async def give_back(
        self, part: object, close_part: Callable[[], Awaitable[None]], name: str
    ) -> None:
        """Release ``part``, closing it if nobody holds it any more (errors are logged)."""
        count = self._holders.get(part, 0) - 1
        if count > 0:
            self._holders[part] = count
            return
        self._holders.pop(part, None)
        try:
            await close_part()
        except Exception as exc:  # closing must go on for the other parts
            log.warning("closing %s: %s", name, type(exc).__name__)


@dataclass(frozen=True, slots=True, eq=False)
class Runtime:
    """Settings and what they built: the connectors, the profile store, the API tokens (and
    the query strings found to carry one of them, see aggregator/query.py)."""

    settings: Settings
    connectors: tuple[Connector[Any], ...]
    store: ProfileStore
    tokens: tuple[bytes, ...]
    leases: Leases = field(default_factory=Leases, repr=False)
    accepted: AcceptedQueries = field(default_factory=AcceptedQueries, repr=False)

    @asynccontextmanager
    async def opened(
        self,
        session: aiohttp.ClientSession,
        *,
        failed: dict[str, Exception] | None = None,
    ) -> AsyncIterator[Runtime]:
        """Open the store, then each connector; close them in reverse on the way out.

        A part that fails to open raises OpenError after closing what was opened; with
        ``failed`` given, it is recorded there instead and left out (``aggregator check``).
        """
        store = self.store
        parts: list[tuple[object, str, Step, Step]] = [(store, "cache", store.open, store.close)]
        parts += [(c, c.name, functools.partial(c.open, session), c.close) for c in self.connectors]
        taken: list[tuple[object, str, Step]] = []
        try:
            for part, name, open_part, close_part in parts:
                try:
                    await self.leases.take(part, open_part)
                except Exception as exc:
                    if failed is None:
                        raise OpenError(name, exc) from exc
                    failed[name] = exc
                    continue
                taken.append((part, name, close_part))
            yield self
        finally:
            for part, name, close_part in reversed(taken):
                await self.leases.give_back(part, close_part, name)


def store_namespace(settings: Settings) -> str:
    """The cache namespace plus a fingerprint of what shapes a profile.

    Changing connectors, their order or prefixes, or the merge settings starts a fresh
    set of keys, so no profile built under the old layout is served under the new one.
    """
    shape = [[name, conf.type, conf.prefix] for name, conf in settings.enabled_connectors()] + [
        settings.merge.max_list_items,
        settings.merge.meta_prefix,
        settings.merge.max_keys,
        settings.merge.max_value_chars,
    ]
    digest = hashlib.sha256(orjson.dumps(shape)).hexdigest()[:8]
    return f"{settings.cache.namespace}:{digest}"


def build_store(settings: Settings) -> ProfileStore:
    """The profile store the cache settings describe."""
    return ProfileStore(settings.cache, namespace=store_namespace(settings))


def build(
    settings: Settings,
    previous: Runtime | None = None,
    *,
    connectors: bool = True,
    cache: bool = True,
) -> Runtime:
    """The runtime ``settings`` describe, keeping the unchanged parts of ``previous``.

    ``connectors=False`` leaves them out (``aggregator purge``); ``cache=False`` uses a
    one-entry in-process store instead of the configured cache (``aggregator preview``).
    """
    kept = {c.name: c for c in previous.connectors} if previous is not None else {}
    built: list[Connector[Any]] = []
    for name, conf in settings.enabled_connectors() if connectors else ():
        current = kept.get(name)
        if current is not None and current.settings == conf:
            built.append(current)
        else:
            built.append(get_connector_type(conf.type)(name, conf))
    if not cache:
        store = ProfileStore(CacheSettings(max_entries=1), namespace="preview")
    elif (
        previous is not None
        and previous.settings.cache == settings.cache
        and previous.store.namespace == store_namespace(settings)
    ):
        store = previous.store
    else:
        store = build_store(settings)
    tokens = tuple(t.get_secret_value().encode() for t in settings.auth.api_tokens)
    leases = previous.leases if previous is not None else Leases()
    accepted = AcceptedQueries(settings.cache.max_entries)
    return Runtime(settings, tuple(built), store, tokens, leases, accepted)


class LiveRuntime:
    """The runtime that serves: opened once, replaced whole on reload, the old one retired.

    ``switch`` is told about every new runtime once it is open (the service swaps its one
    reference); a retired runtime is closed after ``grace`` seconds, once the requests that
    may still use it are done, and only the parts the new runtime does not hold are closed.
    """

    def __init__(self, session: aiohttp.ClientSession, switch: Callable[[Runtime], None]) -> None:
        self.session = session
        self._switch = switch
        self._current: tuple[Runtime, AsyncExitStack] | None = None
        self._retiring: dict[asyncio.Task[None], AsyncExitStack] = {}

    @property
    def runtime(self) -> Runtime:
        """The runtime serving now."""
        if self._current is None:
            raise RuntimeError("no runtime has been started")
        return self._current[0]

    async def start(self, runtime: Runtime, grace: float = 0.0) -> None:
        """Open ``runtime`` and serve from it; OpenError (and nothing changes) if that fails."""
        stack = AsyncExitStack()
        await stack.enter_async_context(runtime.opened(self.session))
        previous, self._current = self._current, (runtime, stack)
        self._switch(runtime)
        if previous is not None:
            task = asyncio.ensure_future(_close_after(previous[1], grace))
            self._retiring[task] = previous[1]
            task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def close(self) -> None:
        """Close retired runtimes now, then the serving one."""
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        for stack in retiring.values():
            await stack.aclose()  # a no-op for a stack its task already closed
        if self._current is not None:
            await self._current[1].aclose()


async def _close_after(stack: AsyncExitStack, grace: float) -> None:
    await asyncio.sleep(grace)
    await stack.aclose()
