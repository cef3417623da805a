"""The profile service: cache policy, single-flight and the fan-out under one deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from aggregator.cache import LOCK_SKIPPED, CacheEntry, ProfileStore, SourceSnapshot
from aggregator.config import Settings
from aggregator.merge import Scalar, Source, flatten, merge_profile, meta_keys, sanitize_key
from aggregator.metrics import Metrics
from connectors.base import Connector, FetchOutcome

log = logging.getLogger("aggregator.service")

INCOMPLETE_FRESH_SECONDS = 10.0
DEADLINE_MARGIN = 0.05
LOCK_POLL_SECONDS = 0.01
NO_OUTCOMES: tuple[FetchOutcome, ...] = ()
T = TypeVar("T")


@dataclass(slots=True)
class ProfileAnswer:
    """What the handler sends: the encoded body, and how it was obtained."""

    body: bytes
    cache: str
    outcomes: Sequence[FetchOutcome] = NO_OUTCOMES
    profile: dict[str, Scalar] | None = None
    contributed: dict[str, list[str]] = field(default_factory=dict)


@dataclass(slots=True)
class _Built:
    answer: ProfileAnswer
    entry: CacheEntry


class ProfileService:
    """Answers profiles from cache or upstreams; one fan-out per email at a time."""

    def __init__(
        self,
        settings: Settings,
        connectors: Sequence[Connector[Any]],
        store: ProfileStore,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.reconfigure(settings, connectors, store)
        self._inflight: dict[str, asyncio.Future[ProfileAnswer]] = {}
        self._refreshing: dict[str, asyncio.Future[ProfileAnswer]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._revalidating: dict[str, asyncio.Future[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def reconfigure(
        self, settings: Settings, connectors: Sequence[Connector[Any]], store: ProfileStore
    ) -> None:
        """Switch to new settings and connectors; fetches already running finish on the old."""
        self.settings = settings
        self.connectors = list(connectors)
        self.store = store
        self._sources = [Source(c.name, c.prefix) for c in self.connectors]
        self._ttl = settings.cache.ttl
        self._stale_ttl = settings.cache.stale_ttl
        self._refresh_ahead = settings.cache.refresh_ahead
        self._deadline = settings.server.deadline
        self._max_list_items = settings.merge.max_list_items
        self._max_keys = settings.merge.max_keys
        self._max_value_chars = settings.merge.max_value_chars
        self._meta_prefix = settings.merge.meta_prefix
        self._cached_key = sanitize_key(f"{self._meta_prefix}_cached")

    def cached_body(self, email: str) -> bytes | None:
        """The fresh in-process copy, if any: the hot path, no awaits, no allocations.

        Past ``near_ttl`` a fresh copy is still answered, and checked against Redis in
        the background (a purge elsewhere is seen within near_ttl plus one request);
        ``near_ttl: 0`` turns that off: every answer then reads Redis.
        """
        now = time.time()
        item = self.store.peek(email, now)
        if item is None:
            return None
        near_until, entry = item
        if now >= entry.fresh_until:
            return None
        if now >= near_until:
            if self.store.near_ttl <= 0:
                return None
            self._revalidate(email)
        return entry.body

    def _revalidate(self, email: str) -> None:
        if email not in self._revalidating:
            self._track(self._revalidating, email, self.store.revalidate(email, time.time()))

    def _track(
        self, registry: dict[str, asyncio.Future[Any]], email: str, work: Coroutine[Any, Any, T]
    ) -> asyncio.Future[T]:
        """Run ``work`` as a task listed under ``email`` in ``registry`` until it ends."""
        task = asyncio.ensure_future(work)
        registry[email] = task
        self._background.add(task)

        def _done(_: asyncio.Future[T]) -> None:
            registry.pop(email, None)
            self._background.discard(task)

        task.add_done_callback(_done)
        return task

    async def get(self, email: str) -> ProfileAnswer:
        """The profile of a normalized email, honoring the cache policy."""
        now = time.time()
        # The budget starts now: a slow cache read must not stretch the answer.
        deadline = asyncio.get_running_loop().time() + self._deadline - DEADLINE_MARGIN
        entry = self.store.get_near(email, now)
        if entry is not None:
            answer = self._answer_from(email, entry, now)
            if answer is not None:
                return answer
        # One task per email reads the shared cache and, if need be, fetches: N concurrent
        # requests for one email cost one Redis read and one fan-out.
        future = self._inflight.get(email)
        if future is None:
            future = self._start_load(email, entry, deadline, read_cache=True)
        return await asyncio.shield(future)

    def _answer_from(self, email: str, entry: CacheEntry, now: float) -> ProfileAnswer | None:
        """Serve a cached entry if policy allows: fresh, or within the refresh-ahead window."""
        if now < entry.fresh_until:
            self.metrics.cache.labels("hit").inc()
            return ProfileAnswer(entry.body, "hit")
        if now < entry.fresh_until + self._refresh_ahead:
            self.metrics.cache.labels("refresh").inc()
            self._refresh_in_background(email, entry)
            return ProfileAnswer(entry.body, "refresh")
        return None

    async def preview(self, email: str) -> ProfileAnswer:
        """Fetch from every upstream now, bypassing the cache entirely."""
        loop = asyncio.get_running_loop()
        built = await self._fan_out(email, None, loop.time() + self._deadline - DEADLINE_MARGIN)
        answer = built.answer
        answer.cache = "bypass"
        fields = {
            name: dict(snap.fields) if snap.fields is not None else None
            for name, snap in built.entry.sources.items()
        }
        answer.contributed = self._contributions(fields)
        return answer

    async def purge(self, email: str) -> bool:
        """Drop one email's cached profile; False when Redis could not be reached."""
        return await self.store.delete(email)

    async def close(self) -> None:
        """Finish pending cache writes, cancel background refreshes."""
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=2.0)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _refresh_in_background(self, email: str, entry: CacheEntry) -> None:
        if email not in self._refreshing:
            task = self._track(self._refreshing, email, self._load(email, entry))
            task.add_done_callback(_consume_exception)

    def _start_load(
        self,
        email: str,
        entry: CacheEntry | None,
        deadline: float | None = None,
        *,
        read_cache: bool = False,
    ) -> asyncio.Future[ProfileAnswer]:
        work = self._load(email, entry, deadline, read_cache=read_cache)
        return self._track(self._inflight, email, work)

    async def _load(
        self,
        email: str,
        entry: CacheEntry | None,
        deadline: float | None = None,
        *,
        read_cache: bool = False,
    ) -> ProfileAnswer:
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self._deadline - DEADLINE_MARGIN
        store = self.store
        remote = store.remote
        if read_cache and remote is not None:
            shared = await store.get_shared(email, time.time())
            if shared is not None:
                answer = self._answer_from(email, shared, time.time())
                if answer is not None:
                    return answer
            # For stale fallback take the newest copy known, including one this process
            # kept while Redis was unreachable (Redis may never have received it).
            known = [e for e in (shared, store.get_local(email, time.time()), entry) if e]
            entry = max(known, key=lambda e: e.fetched_at) if known else None
        self.metrics.cache.labels("miss").inc()
        token = LOCK_SKIPPED
        if remote is not None:
            acquired = await remote.try_lock(store.lock_key(email), self._deadline + 1.0)
            if acquired is None:
                waited = await self._wait_for_other_replica(email, entry, deadline)
                if waited is not None:
                    return waited
            else:
                token = acquired
        try:
            built = await self._fan_out(email, entry, deadline)
        except BaseException:
            self._write_later(store, email, None, token)
            raise
        store.keep_near(email, built.entry, time.time())
        self._write_later(store, email, built.entry, token)
        return built.answer

    def _write_later(
        self, store: ProfileStore, email: str, entry: CacheEntry | None, token: str
    ) -> None:
        """Write to Redis and release the lock after answering: Redis never delays an answer."""
        if store.remote is None:
            return
        remote = store.remote

        async def write() -> None:
            if entry is not None:
                await store.put_shared(email, entry, time.time())
            await remote.unlock(store.lock_key(email), token)

        task = asyncio.ensure_future(write())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _wait_for_other_replica(
        self, email: str, entry: CacheEntry | None, deadline: float
    ) -> ProfileAnswer | None:
        """Another replica is fetching: read what it writes, for at most half the budget.

        None means it did not deliver in time (it may have died holding the lock):
        the caller then fetches itself with the half left.
        """
        loop = asyncio.get_running_loop()
        known = entry.fetched_at if entry is not None else 0.0
        give_up = loop.time() + max(0.0, deadline - loop.time()) / 2
        while loop.time() < give_up:
            await asyncio.sleep(LOCK_POLL_SECONDS)
            fresh = await self.store.get_shared(email, time.time())
            if fresh is not None and fresh.fetched_at > known:
                return ProfileAnswer(fresh.body, "shared")
        return None

    async def _fan_out(self, email: str, entry: CacheEntry | None, deadline: float) -> _Built:
        loop = asyncio.get_running_loop()
        started = loop.time()
        connectors = self.connectors
        tasks = [asyncio.ensure_future(c.fetch(email, deadline)) for c in connectors]
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()) + 0.01)
        outcomes: list[FetchOutcome] = []
        for connector, task in zip(connectors, tasks, strict=True):
            if task.done() and not task.cancelled():
                outcome = task.result()
            else:
                task.cancel()
                outcome = FetchOutcome(connector.name, "timeout", None, loop.time() - started)
            outcomes.append(outcome)
            self.metrics.connector(outcome, connector.circuit.state)
        return self._build(entry, connectors, outcomes)

    def _build(
        self,
        entry: CacheEntry | None,
        connectors: Sequence[Connector[Any]],
        outcomes: Sequence[FetchOutcome],
    ) -> _Built:
        now = time.time()
        fetched_at = datetime.fromtimestamp(now, UTC)
        snapshots: dict[str, SourceSnapshot] = {}
        errors: dict[str, str] = {}
        stale = False
        sources = [Source(c.name, c.prefix) for c in connectors]
        for connector, outcome in zip(connectors, outcomes, strict=True):
            if outcome.status == "ok" and outcome.fields is not None:
                flat = flatten(
                    outcome.fields,
                    max_list_items=self._max_list_items,
                    max_keys=self._max_keys,
                    max_value_chars=self._max_value_chars,
                )
                snapshots[connector.name] = SourceSnapshot(dict(flat), now, "ok")
            elif not outcome.failed:
                snapshots[connector.name] = SourceSnapshot(None, now, outcome.status)
            else:
                # Connectors sharing a prefix: the first to fail reports <prefix>_error,
                # the next <connector name>_error (the merge's collision rule).
                who = connector.prefix or connector.name
                errors[connector.name if who in errors else who] = outcome.status
                previous = entry.sources.get(connector.name) if entry is not None else None
                if (
                    previous is not None
                    and previous.fields is not None
                    and now < previous.fetched_at + self._ttl + self._stale_ttl
                ):
                    snapshots[connector.name] = SourceSnapshot(
                        previous.fields, previous.fetched_at, outcome.status
                    )
                    stale = True
                else:
                    snapshots[connector.name] = SourceSnapshot(None, now, outcome.status)
        # A failed further call (a rest step) is missing data too: short freshness, retried soon.
        complete = not errors and not any(outcome.partial for outcome in outcomes)
        fields = {name: snap.fields for name, snap in snapshots.items()}

        meta = meta_keys(
            self._meta_prefix,
            complete=complete,
            fetched_at=fetched_at,
            cached=False,
            stale=stale,
            errors=errors,
        )
        profile = merge_profile(
            sources,
            fields,
            meta=meta,
            max_list_items=self._max_list_items,
            flat=True,
            max_keys=self._max_keys,
        )

        if stale:
            self.metrics.cache.labels("stale").inc()
        fresh_for = self._ttl if complete else min(self._ttl, INCOMPLETE_FRESH_SECONDS)
        cached_entry = CacheEntry(
            # A copy: orjson's result keeps a much larger buffer than it needs, for life.
            body=bytes(memoryview(orjson.dumps({**profile, self._cached_key: True}))),
            fetched_at=now,
            fresh_until=now + fresh_for,
            stale_until=now + self._ttl + self._stale_ttl,
            sources=snapshots,
        )
        answer = ProfileAnswer(orjson.dumps(profile), "miss", outcomes, profile)
        return _Built(answer, cached_entry)

    def _contributions(self, fields: dict[str, dict[str, Any] | None]) -> dict[str, list[str]]:
        """Which final keys each connector contributed (for the preview page and CLI).

        Keys are assigned in one pass in config order, so the keys of the first i+1
        sources minus those of the first i are exactly what source i contributed.
        """
        result: dict[str, list[str]] = {}
        before: set[str] = set()
        for index, source in enumerate(self._sources):
            upto = merge_profile(
                self._sources[: index + 1],
                fields,
                meta={},
                max_list_items=self._max_list_items,
                max_keys=self._max_keys,
            )
            result[source.name] = sorted(set(upto) - before)
            before = set(upto)
        return result


def _consume_exception(future: asyncio.Future[ProfileAnswer]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("background refresh failed: %s", type(future.exception()).__name__)
