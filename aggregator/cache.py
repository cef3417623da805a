"""Cached profiles: an entry and its state at a given time, the policy that dates it, its keys,
and the in-process copy. Nothing here does I/O.

Every key is built here, from a hash of the email: no raw email ever reaches Redis.
"""

from __future__ import annotations

import enum
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from aggregator.config import CacheSettings

ENTRY_FORMAT = 1
INCOMPLETE_FRESH_SECONDS = 10.0


class EntryState(enum.Enum):
    """What a cached entry is good for at a given time."""

    FRESH = "fresh"  # answered as it is
    REFRESH_AHEAD = "refresh_ahead"  # answered as it is, and refreshed in the background
    STALE = "stale"  # not answered; its fields may stand in for a source that fails
    EXPIRED = "expired"  # of no use


ANSWERABLE = (EntryState.FRESH, EntryState.REFRESH_AHEAD)


@dataclass(slots=True, frozen=True)
class SourceSnapshot:
    """One connector's last contribution: its raw fields, when they were fetched, how it went."""

    fields: dict[str, Any] | None
    fetched_at: float
    status: str


class CacheEntry:
    """A cached profile: the body to answer, its times, and the sources it was built from.

    The sources are kept encoded (the same bytes Redis stores) and decoded only when a
    stale fallback or the preview page needs them: an entry costs its bytes, nothing more.
    """

    __slots__ = ("_header", "body", "fetched_at", "fresh_until", "refresh_until", "stale_until")

    def __init__(
        self,
        body: bytes,
        *,
        fetched_at: float,
        fresh_until: float,
        refresh_until: float,
        stale_until: float,
        header: bytes,
    ) -> None:
        self.body = body
        self.fetched_at = fetched_at
        self.fresh_until = fresh_until
        self.refresh_until = refresh_until
        self.stale_until = stale_until
        self._header = header

    @classmethod
    def create(
        cls,
        body: bytes,
        sources: Mapping[str, SourceSnapshot],
        *,
        fetched_at: float,
        fresh_until: float,
        refresh_until: float,
        stale_until: float,
    ) -> CacheEntry:
        """An entry for ``body`` built from ``sources``."""
        header = {
            "v": ENTRY_FORMAT,
            "f": fetched_at,
            "fu": fresh_until,
            "su": stale_until,
            "s": {name: [s.fields, s.fetched_at, s.status] for name, s in sources.items()},
        }
        return cls(
            body,
            fetched_at=fetched_at,
            fresh_until=fresh_until,
            refresh_until=refresh_until,
            stale_until=stale_until,
            # An exact-size copy: orjson's own result keeps a much larger buffer for life.
            header=bytes(memoryview(orjson.dumps(header, default=str))),
        )

    def state(self, now: float) -> EntryState:
        """Fresh, refresh-ahead, stale or expired at ``now``."""
        if now < self.fresh_until:
            return EntryState.FRESH
        if now < self.refresh_until:
            return EntryState.REFRESH_AHEAD
        if now < self.stale_until:
            return EntryState.STALE
        return EntryState.EXPIRED

    @property
    def sources(self) -> dict[str, SourceSnapshot]:
        """Each connector's snapshot, decoded now."""
        try:
            encoded = orjson.loads(self._header)["s"]
            return {
                name: SourceSnapshot(values[0], float(values[1]), str(values[2]))
                for name, values in encoded.items()
            }
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            return {}

    @property
    def size(self) -> int:
        """Bytes this entry holds: the body plus the encoded sources."""
        return len(self.body) + len(self._header)

    def encode(self) -> bytes:
        """Header JSON, a newline, then the body exactly as it is served."""
        return self._header + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes, refresh_ahead: float) -> CacheEntry | None:
        """Parse what ``encode`` wrote; None for anything unreadable or of another format."""
        head, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        try:
            header = orjson.loads(head)
            if header.get("v") != ENTRY_FORMAT or not isinstance(header.get("s"), dict):
                return None
            fresh_until = float(header["fu"])
            return cls(
                body,
                fetched_at=float(header["f"]),
                fresh_until=fresh_until,
                refresh_until=fresh_until + refresh_ahead,
                stale_until=float(header["su"]),
                header=head,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How long an answer is fresh, answered while refreshing, and kept for stale fallback."""

    ttl: float
    stale_ttl: float
    refresh_ahead: float
    incomplete_ttl: float = INCOMPLETE_FRESH_SECONDS

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> CachePolicy:
        """The policy the ``cache`` settings describe."""
        return cls(settings.ttl, settings.stale_ttl, settings.refresh_ahead)

    def entry(
        self,
        body: bytes,
        sources: Mapping[str, SourceSnapshot],
        *,
        complete: bool,
        fetched_at: float,
    ) -> CacheEntry:
        """The entry for a profile just built; one with a failed source is fresh briefly."""
        fresh_for = self.ttl if complete else min(self.ttl, self.incomplete_ttl)
        fresh_until = fetched_at + fresh_for
        return CacheEntry.create(
            body,
            sources,
            fetched_at=fetched_at,
            fresh_until=fresh_until,
            refresh_until=fresh_until + self.refresh_ahead,
            stale_until=fetched_at + self.ttl + self.stale_ttl,
        )

    def fallback(self, entry: CacheEntry | None, now: float) -> dict[str, SourceSnapshot]:
        """The sources of ``entry`` that may still stand in for a failing connector."""
        if entry is None:
            return {}
        window = self.ttl + self.stale_ttl
        return {
            name: snapshot
            for name, snapshot in entry.sources.items()
            if snapshot.fields is not None and now < snapshot.fetched_at + window
        }

    @property
    def purge_memory(self) -> float:
        """Seconds a purge is remembered: as long as a copy made before it could be used."""
        return self.ttl + self.stale_ttl


def hash_email(email: str) -> str:
    """The stable, non-reversible name of an email inside cache keys and logs."""
    return hashlib.sha256(email.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class CacheKeys:
    """Every key and channel name of one namespace."""

    namespace: str

    def profile(self, email: str) -> str:
        """Key of one email's profile."""
        return f"{self.namespace}:profile:{hash_email(email)}"

    def lock(self, email: str) -> str:
        """Key of the cross-replica fetch lock of one email."""
        return f"{self.namespace}:lock:{hash_email(email)}"

    @property
    def purges(self) -> str:
        """The channel on which a purge is announced to every replica."""
        return f"{self.namespace}:purges"


@dataclass(slots=True)
class NearCopy:
    """An entry kept in this process, and until when it may answer without asking Redis."""

    entry: CacheEntry
    key: str
    near_until: float
    answer_until: float  # min(entry.fresh_until, near_until)
    renew_from: float  # <= answer_until: the hot path's one comparison
    body: bytes


class NearCache:
    """The in-process copies, least recently used evicted first, bounded by count and bytes."""

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        *,
        renew_ahead: float = 0.0,
        renew: Callable[[str, float], None] | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        # In the last ``renew_ahead`` seconds before a copy must ask Redis again, a hit
        # still answers and calls ``renew(email, now)`` so that the copy is checked (and
        # kept) in the background before any request has to wait for Redis.
        self.renew_ahead = renew_ahead if renew is not None else 0.0
        self.renew = renew
        self._copies: OrderedDict[str, NearCopy] = OrderedDict()
        self._emails: dict[str, str] = {}  # profile key -> email, to act on purge notices

    def body(self, email: str, now: float) -> bytes | None:
        """The body of a fresh copy that may answer alone (the hot path: no allocation)."""
        copy = self._copies.get(email)
        if copy is None or now >= copy.renew_from:
            if copy is None or now >= copy.answer_until:
                return None
            if self.renew is not None:
                self.renew(email, now)
        self._copies.move_to_end(email)
        return copy.body

    def get(self, email: str, now: float) -> NearCopy | None:
        """The copy of ``email`` unless it has expired (an expired one is dropped)."""
        copy = self._copies.get(email)
        if copy is None:
            return None
        if now >= copy.entry.stale_until:
            self.drop(email)
            return None
        self._copies.move_to_end(email)
        return copy

    def put(self, email: str, key: str, entry: CacheEntry, near_until: float) -> None:
        """Keep ``entry`` for ``email``; it answers alone until ``near_until``."""
        self.drop(email)
        size = entry.size
        if size > self.max_bytes:
            return
        answer_until = min(entry.fresh_until, near_until)
        renew_from = min(answer_until, near_until - self.renew_ahead)
        self._copies[email] = NearCopy(entry, key, near_until, answer_until, renew_from, entry.body)
        self._emails[key] = email
        self.bytes += size
        while len(self._copies) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._copies))
            self.drop(oldest)

    def drop(self, email: str) -> None:
        """Forget the copy of ``email``, if any."""
        copy = self._copies.pop(email, None)
        if copy is not None:
            self.bytes -= copy.entry.size
            self._emails.pop(copy.key, None)

    def drop_key(self, key: str) -> None:
        """Forget the copy stored under the profile key ``key``, if any."""
        email = self._emails.get(key)
        if email is not None:
            self.drop(email)

    def ask_again(self) -> None:
        """Make every copy ask Redis before it answers again (purge notices may be lost)."""
        for copy in self._copies.values():
            copy.near_until = copy.answer_until = copy.renew_from = float("-inf")

    def __len__(self) -> int:
        return len(self._copies)
