"""The profile service: single-flight, background refreshes and the fan-out under one deadline.

Cache policy is the store's: the service asks it one question per email ("answer this, or
load it with this function") and turns the result into what the handler sends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from aggregator.cache import SourceSnapshot
from aggregator.config import Settings
from aggregator.merge import Scalar, Source, flatten, merge_profile, meta_keys, sanitize_key
from aggregator.metrics import Metrics
from aggregator.runtime import Runtime
from aggregator.store import Loaded, Loader, Lookup, ProfileStore
from aggregator.tasks import CallLater, Debouncer, KeyedTasks
from connectors.base import Connector, FetchOutcome

log = logging.getLogger("aggregator.service")

DEADLINE_MARGIN = 0.05
NO_OUTCOMES: tuple[FetchOutcome, ...] = ()

Clock = Callable[[], float]


@dataclass(slots=True)
class ProfileAnswer:
    """What the handler sends: the encoded body, and how it was obtained."""

    body: bytes
    cache: str
    outcomes: Sequence[FetchOutcome] = NO_OUTCOMES
    profile: dict[str, Scalar] | None = None
    contributed: dict[str, list[str]] = field(default_factory=dict)


class ProfileService:
    """Answers profiles from cache or upstreams; one fan-out per email at a time.

    ``runtime`` is the one reference a reload swaps; work already started finishes on the
    runtime it began with. ``clock`` (epoch seconds) dates entries and decides their state.
    """

    def __init__(
        self,
        runtime: Runtime,
        metrics: Metrics | None = None,
        *,
        clock: Clock = time.time,
        call_later: CallLater | None = None,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.loads: KeyedTasks[str, ProfileAnswer] = KeyedTasks("profile load")
        self.refreshes: KeyedTasks[str, None] = KeyedTasks("background refresh")
        self.refetches: Debouncer[str] = Debouncer(self._refetch, call_later)

    @property
    def settings(self) -> Settings:
        """The settings in use."""
        return self.runtime.settings

    @property
    def connectors(self) -> tuple[Connector[Any], ...]:
        """The connectors in use, in config order."""
        return self.runtime.connectors

    @property
    def store(self) -> ProfileStore:
        """The profile store in use."""
        return self.runtime.store

    def use(self, runtime: Runtime) -> None:
        """Serve from ``runtime`` from now on."""
        self.runtime = runtime

    def cached_body(self, email: str) -> bytes | None:
        """The fresh in-process copy that may answer alone, if any: the hot path, no awaits.

        With Redis, an in-process copy answers alone for ``cache.near_ttl`` seconds; after
        that the next request asks Redis first (``get``), so a purge on another replica is
        seen within near_ttl even if its announcement was lost.
        """
        return self.runtime.store.near.body(email, self.clock())

    async def get(self, email: str) -> ProfileAnswer:
        """The profile of a normalized email, honoring the cache policy."""
        runtime = self.runtime
        # The budget starts now: a slow cache read must not stretch the answer.
        deadline = self._deadline(runtime)
        near = runtime.store.answer_near(email, self.clock())
        if near is not None:
            return self._answered(runtime, email, near)
        # One task per email reads the shared cache and, if need be, fetches: N concurrent
        # requests for one email cost one Redis read and one fan-out.
        task = self.loads.start(email, lambda: self._answer(runtime, email, deadline))
        return await asyncio.shield(task)

    async def preview(self, email: str) -> ProfileAnswer:
        """Fetch from every upstream now, bypassing the cache entirely."""
        runtime = self.runtime
        outcomes = await self._fan_out(runtime, email, self._deadline(runtime))
        built = self._build(runtime, {}, outcomes)
        answer = built.result
        answer.cache = "bypass"
        answer.contributed = self._contributions(runtime, built.sources)
        return answer

    async def purge(self, email: str) -> bool:
        """Drop one email's cached profile everywhere; False when Redis could not be reached."""
        return await self.runtime.store.purge(email, self.clock())

    async def invalidate(self, email: str) -> bool:
        """Drop ``email``'s profile after an upstream change (a Stripe event).

        A profile that was cached (someone looked at it recently) is fetched again in the
        background once ``webhooks.refetch_after`` seconds pass with no further event for
        it, so the next Groove call is a cached hit, not a cold fetch. False when Redis
        could not be reached.
        """
        runtime = self.runtime
        delay = runtime.settings.webhooks.refetch_after
        cached = delay is not None and await runtime.store.get(email, self.clock()) is not None
        purged = await self.purge(email)
        if cached and delay is not None:
            self.refetches.poke(email, delay)
        return purged

    def _refetch(self, email: str) -> None:
        """Load ``email`` now, shared with any Groove request for it meanwhile."""
        runtime = self.runtime
        deadline = self._deadline(runtime)
        self.loads.start(email, lambda: self._answer(runtime, email, deadline))

    async def close(self) -> None:
        """Cancel pending refetches, background refreshes and loads still running."""
        self.refetches.cancel()
        await self.refreshes.cancel()
        await self.loads.cancel()

    def _deadline(self, runtime: Runtime) -> float:
        loop = asyncio.get_running_loop()
        return loop.time() + runtime.settings.server.deadline - DEADLINE_MARGIN

    async def _answer(self, runtime: Runtime, email: str, deadline: float) -> ProfileAnswer:
        lookup = await runtime.store.answer(
            email, self._loader(runtime, email, deadline), now=self.clock(), deadline=deadline
        )
        return self._answered(runtime, email, lookup)

    def _answered(self, runtime: Runtime, email: str, lookup: Lookup[Any]) -> ProfileAnswer:
        if lookup.cache == "hit" or lookup.cache == "refresh":
            self.metrics.cache.labels(lookup.cache).inc()
            if lookup.cache == "refresh":
                self.refreshes.start(email, lambda: self._refresh(runtime, email))
            return ProfileAnswer(lookup.entry.body, lookup.cache)
        self.metrics.cache.labels("miss").inc()
        if isinstance(lookup.loaded, ProfileAnswer):
            return lookup.loaded
        return ProfileAnswer(lookup.entry.body, lookup.cache)

    async def _refresh(self, runtime: Runtime, email: str) -> None:
        """Load again a profile answered in its refresh-ahead window."""
        deadline = self._deadline(runtime)
        loader = self._loader(runtime, email, deadline)
        lookup = await runtime.store.answer(
            email, loader, now=self.clock(), deadline=deadline, refresh=True
        )
        if lookup.cache in ("miss", "shared"):
            self.metrics.cache.labels("miss").inc()

    def _loader(self, runtime: Runtime, email: str, deadline: float) -> Loader[ProfileAnswer]:
        async def load(previous: Mapping[str, SourceSnapshot]) -> Loaded[ProfileAnswer]:
            outcomes = await self._fan_out(runtime, email, deadline)
            return self._build(runtime, previous, outcomes)

        return load

    async def _fan_out(self, runtime: Runtime, email: str, deadline: float) -> list[FetchOutcome]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        connectors = runtime.connectors
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
        return outcomes

    def _build(
        self,
        runtime: Runtime,
        previous: Mapping[str, SourceSnapshot],
        outcomes: Sequence[FetchOutcome],
    ) -> Loaded[ProfileAnswer]:
        """Merge the outcomes; a failed connector's ``previous`` fields stand in, marked stale."""
        now = self.clock()
        settings = runtime.settings
        max_list_items = settings.merge.max_list_items
        max_keys = settings.merge.max_keys
        max_value_chars = settings.merge.max_value_chars
        meta_prefix = settings.merge.meta_prefix
        connectors = runtime.connectors
        snapshots: dict[str, SourceSnapshot] = {}
        errors: dict[str, str] = {}
        stale = False
        for connector, outcome in zip(connectors, outcomes, strict=True):
            if outcome.status == "ok" and outcome.fields is not None:
                flat = flatten(
                    outcome.fields,
                    max_list_items=max_list_items,
                    max_keys=max_keys,
                    max_value_chars=max_value_chars,
                )
                snapshots[connector.name] = SourceSnapshot(dict(flat), now, "ok")
            elif not outcome.failed:
                snapshots[connector.name] = SourceSnapshot(None, now, outcome.status)
            else:
                # Connectors sharing a prefix: the first to fail reports <prefix>_error,
                # the next <connector name>_error (the merge's collision rule).
                who = connector.prefix or connector.name
                errors[connector.name if who in errors else who] = outcome.status
                kept = previous.get(connector.name)
                if kept is not None and kept.fields is not None:
                    snapshots[connector.name] = SourceSnapshot(
                        kept.fields, kept.fetched_at, outcome.status
                    )
                    stale = True
                else:
                    snapshots[connector.name] = SourceSnapshot(None, now, outcome.status)
        # A failed further call (a rest step) is missing data too: short freshness, retried soon.
        complete = not errors and not any(outcome.partial for outcome in outcomes)
        fields = {name: snap.fields for name, snap in snapshots.items()}

        meta = meta_keys(
            meta_prefix,
            complete=complete,
            fetched_at=datetime.fromtimestamp(now, UTC),
            cached=False,
            stale=stale,
            errors=errors,
        )
        sources = [Source(c.name, c.prefix) for c in connectors]
        profile = merge_profile(
            sources,
            fields,
            meta=meta,
            max_list_items=max_list_items,
            flat=True,
            max_keys=max_keys,
        )

        if stale:
            self.metrics.cache.labels("stale").inc()
        cached_key = sanitize_key(f"{meta_prefix}_cached")
        # A copy: orjson's result keeps a much larger buffer than it needs, for life.
        cached_body = bytes(memoryview(orjson.dumps({**profile, cached_key: True})))
        answer = ProfileAnswer(orjson.dumps(profile), "miss", outcomes, profile)
        return Loaded(cached_body, snapshots, complete, now, answer)

    def _contributions(
        self, runtime: Runtime, snapshots: Mapping[str, SourceSnapshot]
    ) -> dict[str, list[str]]:
        """Which final keys each connector contributed (for the preview page and CLI).

        Keys are assigned in one pass in config order, so the keys of the first i+1
        sources minus those of the first i are exactly what source i contributed.
        """
        max_list_items = runtime.settings.merge.max_list_items
        sources = [Source(c.name, c.prefix) for c in runtime.connectors]
        fields = {
            name: dict(snap.fields) if snap.fields is not None else None
            for name, snap in snapshots.items()
        }
        result: dict[str, list[str]] = {}
        before: set[str] = set()
        for index, source in enumerate(sources):
            upto = merge_profile(
                sources[: index + 1],
                fields,
                meta={},
                max_list_items=max_list_items,
                max_keys=runtime.settings.merge.max_keys,
            )
            result[source.name] = sorted(set(upto) - before)
            before = set(upto)
        return result
