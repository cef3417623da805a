"""The profile store: the service asks one question, "answer this email, or load it with this".

The store owns cache policy: the in-process (near) copy, the shared backend, which copy
is the newest usable one, the cross-replica lock, waiting for another replica, writing
behind the answer, stale fallback and purges.

One rule decides which copy is used (``_newest``): the most recently fetched copy that has
not expired and was fetched after the last purge of that email known here. A purge is
recorded where the profile was (a purge record with its time), announced to every
replica (which drop their near copy at once), and a load that started before a purge
keeps nothing. A near copy answers on its own for at most ``cache.near_ttl`` seconds before
the shared copy is asked again, so even an announcement that got lost cannot keep purged
data alive longer than that.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from aggregator.backends import (
    LOCK_SKIPPED,
    Backend,
    BackendUnavailable,
    Purged,
    backend_for,
)
from aggregator.cache import (
    ANSWERABLE,
    CacheEntry,
    CacheKeys,
    CachePolicy,
    EntryState,
    NearCache,
    SourceSnapshot,
)
from aggregator.config import CacheSettings
from aggregator.tasks import CallLater, TimerHandle, loop_call_later

log = logging.getLogger("aggregator.cache")

T = TypeVar("T")

LOCK_POLL_SECONDS = 0.01
LOCK_MARGIN_SECONDS = 1.0
WRITE_WAIT_SECONDS = 2.0
MAX_PURGES_KEPT = 10_000
# A near copy is renewed in the background once it has less than this share of near_ttl
# left, RENEW_DELAY_SHARE of near_ttl after the first such hit (one read for a batch).
RENEW_AHEAD_SHARE = 0.5
RENEW_DELAY_SHARE = 0.1

CacheResult = Literal["hit", "refresh", "shared", "miss"]


class _Unreachable:
    """The shared backend could not say (down, slow or busy)."""


UNREACHABLE = _Unreachable()


@dataclass(slots=True)
class Loaded(Generic[T]):
    """What a load produced: the body to cache, its sources, and the loader's own result.

    ``result`` goes back, untouched, to the caller whose request caused the load.
    """

    body: bytes
    sources: dict[str, SourceSnapshot]
    complete: bool
    fetched_at: float
    result: T


Loader = Callable[[Mapping[str, SourceSnapshot]], Awaitable[Loaded[T]]]


@dataclass(slots=True)
class Lookup(Generic[T]):
    """The store's answer: the entry, how it was obtained, and the load's result if it loaded."""

    entry: CacheEntry
    cache: CacheResult
    loaded: T | None = None


class ProfileStore:
    """Cached profiles: an in-process copy in front of a backend shared by every replica."""

    def __init__(
        self,
        settings: CacheSettings,
        *,
        namespace: str,
        backend: Backend | None = None,
        call_later: CallLater | None = None,
    ) -> None:
        self.settings = settings
        self.keys = CacheKeys(namespace)
        self.policy = CachePolicy.from_settings(settings)
        self.backend = backend or backend_for(settings.url, settings.timeout, self.keys.purges)
        # With nothing shared, the in-process copy is the only one and answers alone.
        self.near_ttl = settings.near_ttl if self.backend.shared else math.inf
        renews = self.backend.shared and settings.near_ttl > 0
        self.near = NearCache(
            settings.max_entries,
            settings.max_bytes,
            renew_ahead=settings.near_ttl * RENEW_AHEAD_SHARE,
            renew=self._renew_soon if renews else None,
        )
        self._call_later = call_later
        self._renewals: dict[str, float] = {}
        self._renewal: TimerHandle | None = None
        self._purges: dict[str, float] = {}
        self._writes: set[asyncio.Future[None]] = set()
        self._writing: dict[str, asyncio.Future[None]] = {}

    @property
    def namespace(self) -> str:
        """The namespace of every key."""
        return self.keys.namespace

    @property
    def shared(self) -> bool:
        """Whether copies are shared with other replicas (Redis) or kept in-process only."""
        return self.backend.shared

    def answer_near(self, email: str, now: float) -> Lookup[None] | None:
        """A fresh or refresh-ahead in-process copy that may answer alone, without any I/O."""
        copy = self.near.get(email, now)
        if copy is None or now >= copy.near_until:
            return None
        state = copy.entry.state(now)
        if state is EntryState.FRESH:
            return Lookup(copy.entry, "hit")
        if state is EntryState.REFRESH_AHEAD:
            return Lookup(copy.entry, "refresh")
        return None

    async def get(self, email: str, now: float) -> CacheEntry | None:
        """The newest usable copy (fresh, refresh-ahead or stale), without loading anything."""
        return await self._lookup(email, self.keys.profile(email), now)

    async def answer(
        self,
        email: str,
        load: Loader[T],
        *,
        now: float,
        deadline: float,
        refresh: bool = False,
    ) -> Lookup[T]:
        """A cached answer when policy allows, else the result of ``load``.

        ``load`` gets the sources that may stand in for a failing connector. ``deadline``
        (event-loop time) bounds waiting for another replica. With ``refresh``, only a
        fresh copy is answered: a refresh-ahead one is loaded again.
        """
        key = self.keys.profile(email)
        newest = await self._lookup(email, key, now)
        if newest is not None:
            state = newest.state(now)
            if state is EntryState.FRESH:
                return Lookup(newest, "hit")
            if state is EntryState.REFRESH_AHEAD and not refresh:
                return Lookup(newest, "refresh")
        return await self._load(email, key, load, newest, now, deadline)

    async def purge(self, email: str, now: float) -> bool:
        """Drop one email's profile on every replica; False if the backend could not be told."""
        key = self.keys.profile(email)
        self._heard_purge(key, now)
        return await self.backend.delete(key, at=now, remember=self.policy.purge_memory)

    async def ready(self) -> tuple[bool, str]:
        """Whether the shared cache answers now, with a short description."""
        ok, detail = await self.backend.ping()
        if not self.backend.shared:
            return ok, f"{detail} ({len(self.near)} entries)"
        return ok, detail

    async def open(self) -> None:
        """Start hearing purges made on other replicas."""
        await self.backend.open(self._heard_purge, self.near.ask_again)

    async def renew(self, due: Mapping[str, float]) -> None:
        """Check near copies against the shared copies in one read, keeping the newest
        usable one of each (the one rule) for another ``near_ttl`` from ``due[email]``."""
        copies = [(email, now, self.near.get(email, now)) for email, now in due.items()]
        known = [(email, now, copy) for email, now, copy in copies if copy is not None]
        if not known:
            return
        records: list[bytes | Purged | _Unreachable | None]
        try:
            records = list(await self.backend.get_many([copy.key for _, _, copy in known]))
        except BackendUnavailable:
            records = [UNREACHABLE] * len(known)
        for (email, now, copy), record in zip(known, records, strict=True):
            current = self.near.get(email, now)
            if current is not None:  # not dropped (purged, evicted) while reading
                self._newest(email, copy.key, current.entry, record, now)

    def _renew_soon(self, email: str, now: float) -> None:
        """A near copy near the end of its ``near_ttl`` answered: renew it (with every other
        such copy) in one background read shortly, so that no request waits for Redis."""
        if email in self._renewals:
            return
        self._renewals[email] = now
        if self._renewal is None:
            call_later = self._call_later or loop_call_later
            self._renewal = call_later(self.near_ttl * RENEW_DELAY_SHARE, self._start_renewal)

    def _start_renewal(self) -> None:
        self._renewal = None
        due, self._renewals = self._renewals, {}
        task = asyncio.ensure_future(self.renew(due))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def idle(self) -> None:
        """Wait until the background work started so far (writes, renewals) has ended."""
        while self._writes:
            await asyncio.wait(list(self._writes))

    async def close(self) -> None:
        """Finish pending writes (briefly), then close the backend."""
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=WRITE_WAIT_SECONDS)
        await self.backend.close()

    async def _lookup(self, email: str, key: str, now: float) -> CacheEntry | None:
        copy = self.near.get(email, now)
        if copy is not None and now < copy.near_until and copy.entry.state(now) in ANSWERABLE:
            return copy.entry
        record = await self._read(key)
        return self._newest(email, key, copy.entry if copy else None, record, now)

    async def _read(self, key: str) -> bytes | Purged | _Unreachable | None:
        try:
            return await self.backend.get(key)
        except BackendUnavailable:
            return UNREACHABLE

    def _newest(
        self,
        email: str,
        key: str,
        local: CacheEntry | None,
        record: bytes | Purged | _Unreachable | None,
        now: float,
    ) -> CacheEntry | None:
        """The one rule: the newest copy that has not expired and is younger than any purge.

        The near copy is replaced by the winner (answering alone for near_ttl again), or
        dropped when nothing is usable.
        """
        purged_at = self._purges.get(key, -math.inf)
        shared: CacheEntry | None = None
        if isinstance(record, Purged):
            purged_at = max(purged_at, record.at)
        elif isinstance(record, bytes):
            shared = CacheEntry.decode(record, self.policy.refresh_ahead)
        best: CacheEntry | None = None
        for copy in (local, shared):
            if copy is None or copy.fetched_at <= purged_at or copy.stale_until <= now:
                continue
            if best is None or copy.fetched_at > best.fetched_at:
                best = copy
        if best is None:
            self.near.drop(email)
        else:
            self.near.put(email, key, best, now + self.near_ttl)
        return best

    async def _load(
        self,
        email: str,
        key: str,
        load: Loader[T],
        newest: CacheEntry | None,
        now: float,
        deadline: float,
    ) -> Lookup[T]:
        loop = asyncio.get_running_loop()
        lock_key = self.keys.lock(email)
        writing = self._writing.get(key)
        if writing is not None:
            # Our own last load of this email still holds the lock while it writes.
            await asyncio.wait({writing})
        lock_ttl = max(0.0, deadline - loop.time()) + LOCK_MARGIN_SECONDS
        token = await self.backend.lock(lock_key, lock_ttl)
        if token is None:
            delivered = await self._wait_for_other_replica(email, key, newest, now, deadline)
            if delivered is not None:
                return Lookup(delivered, "shared")
            token = LOCK_SKIPPED
        try:
            loaded = await load(self.policy.fallback(newest, now))
        except BaseException:
            self._later(self.backend.unlock(lock_key, token), key)
            raise
        entry = self.policy.entry(
            loaded.body, loaded.sources, complete=loaded.complete, fetched_at=loaded.fetched_at
        )
        if self._purges.get(key, -math.inf) >= now:
            # Purged while this was loading: the answer goes out, nothing of it is kept.
            self._later(self.backend.unlock(lock_key, token), key)
        else:
            self.near.put(email, key, entry, entry.fetched_at + self.near_ttl)
            self._later(self._write(key, entry, now, lock_key, token), key)
        return Lookup(entry, "miss", loaded.result)

    async def _wait_for_other_replica(
        self, email: str, key: str, known: CacheEntry | None, now: float, deadline: float
    ) -> CacheEntry | None:
        """Another replica is loading: read what it writes, for at most half the budget.

        None means it did not deliver in time (it may have died holding the lock): the
        caller then loads itself with the half left.
        """
        loop = asyncio.get_running_loop()
        known_at = known.fetched_at if known is not None else -math.inf
        give_up = loop.time() + max(0.0, deadline - loop.time()) / 2
        while loop.time() < give_up:
            await asyncio.sleep(LOCK_POLL_SECONDS)
            record = await self._read(key)
            if isinstance(record, bytes | Purged):
                copy = self.near.get(email, now)
                newest = self._newest(email, key, copy.entry if copy else None, record, now)
                if newest is not None and newest.fetched_at > known_at:
                    return newest
        return None

    async def _write(
        self, key: str, entry: CacheEntry, started: float, lock_key: str, token: str
    ) -> None:
        """Store in the shared backend, then release the lock: after the answer has gone."""
        ttl = entry.stale_until - entry.fetched_at
        await self.backend.set(key, entry.encode(), ttl, unless_purged_after=started)
        await self.backend.unlock(lock_key, token)

    def _later(self, work: Awaitable[None], key: str) -> None:
        """Run ``work`` (writing, unlocking) after the answer; our next load of ``key`` waits."""
        task = asyncio.ensure_future(work)
        self._writes.add(task)
        self._writing[key] = task

        def done(_: asyncio.Future[None]) -> None:
            self._writes.discard(task)
            if self._writing.get(key) is task:
                del self._writing[key]

        task.add_done_callback(done)

    def _heard_purge(self, key: str, at: float) -> None:
        """A purge of ``key`` (here or announced by another replica): drop the near copy."""
        if at > self._purges.get(key, -math.inf):
            self._purges.pop(key, None)
            self._purges[key] = at
        self.near.drop_key(key)
        if len(self._purges) > MAX_PURGES_KEPT:
            for old in list(self._purges)[: MAX_PURGES_KEPT // 2]:
                del self._purges[old]
