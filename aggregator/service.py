"""The profile service: cache policy, single-flight and the fan-out under one deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
        self._meta_prefix = settings.merge.meta_prefix

    def cached_body(self, email: str) -> bytes | None:
        """The fresh in-process copy, if any: the hot path, no awaits, no allocations."""
        now = time.time()
        entry = self.store.get_near(email, now)
        if entry is not None and now < entry.fresh_until:
            return entry.body
        return None

    async def get(self, email: str) -> ProfileAnswer:
        """The profile of a normalized email, honoring the cache policy."""
        now = time.time()
        entry = await self.store.get(email, now)
        if entry is not None and now < entry.fresh_until:
            self.metrics.cache.labels("hit").inc()
            return ProfileAnswer(entry.body, "hit")
        if entry is not None and now < entry.fresh_until + self._refresh_ahead:
            self.metrics.cache.labels("refresh").inc()
            self._refresh_in_background(email, entry)
            return ProfileAnswer(entry.body, "refresh")
        self.metrics.cache.labels("miss").inc()
        return await self._single_flight(email, entry)

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
        """Cancel background refreshes."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _refresh_in_background(self, email: str, entry: CacheEntry) -> None:
        if email in self._inflight:
            return
        future = self._start_load(email, entry)
        future.add_done_callback(_consume_exception)

    async def _single_flight(self, email: str, entry: CacheEntry | None) -> ProfileAnswer:
        future = self._inflight.get(email)
        if future is None:
            future = self._start_load(email, entry)
        return await asyncio.shield(future)

    def _start_load(self, email: str, entry: CacheEntry | None) -> asyncio.Future[ProfileAnswer]:
        task = asyncio.ensure_future(self._load(email, entry))
        self._inflight[email] = task
        self._background.add(task)

        def _done(_: asyncio.Future[ProfileAnswer]) -> None:
            self._inflight.pop(email, None)
            self._background.discard(task)

        task.add_done_callback(_done)
        return task

    async def _load(self, email: str, entry: CacheEntry | None) -> ProfileAnswer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline - DEADLINE_MARGIN
        store = self.store
        remote = store.remote
        token = LOCK_SKIPPED
        if remote is not None:
            lock_key = store.lock_key(email)
            acquired = await remote.try_lock(lock_key, self._deadline + 1.0)
            if acquired is None:
                return await self._wait_for_other_replica(email, entry, deadline)
            token = acquired
        try:
            built = await self._fan_out(email, entry, deadline)
            await store.put(email, built.entry, time.time())
            return built.answer
        finally:
            if remote is not None:
                await remote.unlock(store.lock_key(email), token)

    async def _wait_for_other_replica(
        self, email: str, entry: CacheEntry | None, deadline: float
    ) -> ProfileAnswer:
        loop = asyncio.get_running_loop()
        known = entry.fetched_at if entry is not None else 0.0
        self.store.near.delete(email)
        while loop.time() < deadline:
            await asyncio.sleep(LOCK_POLL_SECONDS)
            fresh = await self.store.get(email, time.time())
            if fresh is not None and fresh.fetched_at > known:
                return ProfileAnswer(fresh.body, "shared")
        if entry is not None:
            return ProfileAnswer(_mark_stale(entry.body, self._meta_prefix), "stale")
        errors = {c.prefix or c.name: "timeout" for c in self.connectors}
        meta = meta_keys(
            self._meta_prefix,
            complete=False,
            fetched_at=datetime.now(UTC),
            cached=False,
            stale=False,
            errors=errors,
        )
        return ProfileAnswer(orjson.dumps(meta), "timeout")

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
                flat = flatten(outcome.fields, max_list_items=self._max_list_items)
                snapshots[connector.name] = SourceSnapshot(dict(flat), now, "ok")
            elif not outcome.failed:
                snapshots[connector.name] = SourceSnapshot(None, now, outcome.status)
            else:
                errors[connector.prefix or connector.name] = outcome.status
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
        complete = not errors
        fields = {name: snap.fields for name, snap in snapshots.items()}

        def render(cached: bool) -> dict[str, Scalar]:
            meta = meta_keys(
                self._meta_prefix,
                complete=complete,
                fetched_at=fetched_at,
                cached=cached,
                stale=stale,
                errors=errors,
            )
            return merge_profile(sources, fields, meta=meta, max_list_items=self._max_list_items)

        if stale:
            self.metrics.cache.labels("stale").inc()
        profile = render(cached=False)
        fresh_for = self._ttl if complete else min(self._ttl, INCOMPLETE_FRESH_SECONDS)
        cached_entry = CacheEntry(
            body=orjson.dumps(render(cached=True)),
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
                self._sources[: index + 1], fields, meta={}, max_list_items=self._max_list_items
            )
            result[source.name] = sorted(set(upto) - before)
            before = set(upto)
        return result


def _mark_stale(body: bytes, meta_prefix: str) -> bytes:
    profile = orjson.loads(body)
    profile[sanitize_key(f"{meta_prefix}_stale")] = True
    return orjson.dumps(profile)


def _consume_exception(future: asyncio.Future[ProfileAnswer]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("background refresh failed: %s", type(future.exception()).__name__)
