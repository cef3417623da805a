"""Profile cache: an in-process LRU, optionally in front of Redis (single node or cluster).

Every key is built here, from a hash of the email: no raw email ever reaches Redis.
A Redis that is slow or down never fails a request: operations are bounded by
``cache.timeout``, errors count as misses, and a breaker skips Redis for a moment
after a failure so a dead Redis costs nothing per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import MaxConnectionsError, RedisClusterException, RedisError

from aggregator.resilience import CircuitBreaker

log = logging.getLogger("aggregator.cache")

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

ENTRY_FORMAT = 1
LOCK_SKIPPED = ""
MAX_CONNECTIONS = 256
# RedisClusterException (e.g. no node reachable) does not derive from RedisError.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)


@dataclass(slots=True)
class SourceSnapshot:
    """One connector's last contribution: its raw fields, when they were fetched, how it went."""

    fields: dict[str, Any] | None
    fetched_at: float
    status: str


@dataclass(slots=True)
class CacheEntry:
    """A cached profile: the encoded answer to serve, and what it was built from."""

    body: bytes
    fetched_at: float
    fresh_until: float
    stale_until: float
    sources: dict[str, SourceSnapshot] = field(default_factory=dict)

    def encode(self) -> bytes:
        """Header JSON, a newline, then the body exactly as it is served."""
        header = {
            "v": ENTRY_FORMAT,
            "f": self.fetched_at,
            "fu": self.fresh_until,
            "su": self.stale_until,
            "s": {
                name: [snap.fields, snap.fetched_at, snap.status]
                for name, snap in self.sources.items()
            },
        }
        return orjson.dumps(header, default=str) + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CacheEntry | None:
        """Parse what ``encode`` wrote; None for anything unreadable or of another format."""
        head, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        try:
            header = orjson.loads(head)
            if header.get("v") != ENTRY_FORMAT:
                return None
            sources = {
                name: SourceSnapshot(values[0], float(values[1]), str(values[2]))
                for name, values in header["s"].items()
            }
            return cls(body, float(header["f"]), float(header["fu"]), float(header["su"]), sources)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            return None


class LruCache(Generic[K, V]):
    """A bounded mapping with a per-item expiry; the least recently used item goes first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, now: float | None = None) -> V | None:
        """The value if present and not expired."""
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= (time.time() if now is None else now):
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def set(self, key: K, value: V, expires: float) -> None:
        """Store until the epoch time ``expires``, evicting the oldest item when full."""
        self._data[key] = (expires, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def delete(self, key: K) -> None:
        """Drop a key if present."""
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


def hash_email(email: str) -> str:
    """The stable, non-reversible name of an email inside cache keys and logs."""
    return hashlib.sha256(email.encode("utf-8")).hexdigest()[:32]


class RedisBackend:
    """Thin, time-bounded access to Redis; every failure is reported as None/False."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.breaker = CircuitBreaker(threshold=3, reset=1.0)
        self.last_error: str | None = None
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "health_check_interval": 15,
            "max_connections": MAX_CONNECTIONS,
        }
        self.client: Redis | RedisCluster
        scheme, sep, rest = url.partition("://")
        if scheme.endswith("+cluster"):
            real_url = scheme.removesuffix("+cluster") + sep + rest
            self.client = RedisCluster.from_url(real_url, **options)
        else:
            self.client = Redis.from_url(url, retry_on_timeout=False, **options)
        self._needs_discovery = isinstance(self.client, RedisCluster)
        self._discovery_lock = asyncio.Lock()

    async def _discover(self) -> None:
        # Concurrent first commands on a new redis-py cluster client race its slot
        # discovery (wrong node, MOVED, then a refresh that drops the others' connections
        # mid-command): learn the topology once, before any command is sent.
        async with self._discovery_lock:
            if self._needs_discovery and isinstance(self.client, RedisCluster):
                await self.client.initialize()
            self._needs_discovery = False

    async def _run(self, operation: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        if not self.breaker.allow():
            return False, None
        try:
            async with asyncio.timeout(self.timeout):
                if self._needs_discovery:
                    await self._discover()
                result = await operation()
        except MaxConnectionsError:
            # Our own pool is busy, Redis is fine: a miss for this call, not an outage.
            return False, None
        except REDIS_FAILURES as exc:
            if self.last_error is None:
                log.warning("redis unavailable (%s); answering uncached", type(exc).__name__)
            self.last_error = type(exc).__name__
            self.breaker.record_failure()
            return False, None
        if self.last_error is not None:
            log.info("redis reachable again")
        self.last_error = None
        self.breaker.record_success()
        return True, result

    async def fetch(self, key: str) -> tuple[bool, bytes | None]:
        """(whether Redis answered, the raw value or None)."""
        ok, value = await self._run(lambda: self.client.get(key))
        return ok, value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        """Store with an expiry in seconds; False when Redis is unusable."""
        ok, _ = await self._run(lambda: self.client.set(key, value, px=max(1, int(ttl * 1000))))
        return ok

    async def delete(self, key: str) -> bool:
        """Remove a key; False when Redis is unusable."""
        ok, _ = await self._run(lambda: self.client.delete(key))
        return ok

    async def try_lock(self, key: str, ttl: float) -> str | None:
        """Take a lock: its token, None if held elsewhere, LOCK_SKIPPED if Redis is out."""
        token = uuid.uuid4().hex
        ok, acquired = await self._run(
            lambda: self.client.set(key, token, nx=True, px=max(1, int(ttl * 1000)))
        )
        if not ok:
            return LOCK_SKIPPED
        return token if acquired else None

    async def unlock(self, key: str, token: str) -> None:
        """Release a lock only if we still hold it."""
        if token == LOCK_SKIPPED:
            return
        script = (
            "if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) else return 0 end"
        )
        await self._run(lambda: self.client.eval(script, 1, key, token))

    async def ping(self) -> bool:
        """True when Redis answers now (bypasses the breaker)."""
        try:
            async with asyncio.timeout(self.timeout):
                if self._needs_discovery:
                    await self._discover()
                await self.client.ping()
        except REDIS_FAILURES as exc:
            self.last_error = type(exc).__name__
            return False
        self.last_error = None
        self.breaker.record_success()
        return True

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


class ProfileStore:
    """Where profiles are kept: an in-process copy and, when configured, Redis.

    With Redis, the in-process copy answers on its own for ``near_ttl`` seconds and is
    kept until the entry's stale time, so it can still be served stale while Redis is
    unreachable. Redis stays the source of truth whenever it answers.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        max_entries: int,
        near_ttl: float,
        timeout: float,
    ) -> None:
        self.namespace = namespace
        self.remote = None if url.startswith("memory://") else RedisBackend(url, timeout)
        self.near_ttl = near_ttl
        self.near: LruCache[str, tuple[float, CacheEntry]] = LruCache(max_entries)

    def profile_key(self, email: str) -> str:
        """Cache key of one email's profile."""
        return f"{self.namespace}:profile:{hash_email(email)}"

    def lock_key(self, email: str) -> str:
        """Key of the cross-replica fetch lock of one email."""
        return f"{self.namespace}:lock:{hash_email(email)}"

    def get_near(self, email: str, now: float) -> CacheEntry | None:
        """The in-process copy while it may answer on its own, without any I/O."""
        item = self.near.get(email, now)
        if item is None or now >= item[0]:
            return None
        return item[1]

    def peek(self, email: str, now: float) -> tuple[float, CacheEntry] | None:
        """(until when it may answer alone, entry) for the in-process copy, without any I/O."""
        return self.near.get(email, now)

    async def revalidate(self, email: str, now: float) -> None:
        """Check the in-process copy against Redis: drop it if purged, take a newer one."""
        if self.remote is None:
            return
        ok, raw = await self.remote.fetch(self.profile_key(email))
        local = self.get_local(email, now)
        if not ok:
            if local is not None:
                self.keep_near(email, local, now)
            return
        entry = CacheEntry.decode(raw) if raw is not None else None
        if entry is None or entry.stale_until <= now:
            self.near.delete(email)
        elif local is None or local.fetched_at <= entry.fetched_at:
            self.keep_near(email, entry, now)
        else:
            self.keep_near(email, local, now)

    def get_local(self, email: str, now: float) -> CacheEntry | None:
        """Any in-process copy still within its stale time."""
        item = self.near.get(email, now)
        return None if item is None else item[1]

    async def get(self, email: str, now: float) -> CacheEntry | None:
        """The cached entry (fresh or stale), or None."""
        entry = self.get_near(email, now)
        if entry is not None or self.remote is None:
            return entry
        return await self.get_shared(email, now)

    async def get_shared(self, email: str, now: float) -> CacheEntry | None:
        """The entry in Redis (what every replica sees); our own copy if Redis can't say."""
        if self.remote is None:
            return self.get_local(email, now)
        ok, raw = await self.remote.fetch(self.profile_key(email))
        if not ok:
            return self.get_local(email, now)
        entry = CacheEntry.decode(raw) if raw is not None else None
        if entry is None or entry.stale_until <= now:
            return None
        local = self.get_local(email, now)
        if local is None or local.fetched_at <= entry.fetched_at:
            self.keep_near(email, entry, now)
        return entry

    def keep_near(self, email: str, entry: CacheEntry, now: float) -> None:
        """Keep the in-process copy (answering alone for near_ttl when Redis is used)."""
        near_until = entry.stale_until if self.remote is None else now + self.near_ttl
        self.near.set(email, (near_until, entry), entry.stale_until)

    async def put_shared(self, email: str, entry: CacheEntry, now: float) -> bool:
        """Write an entry to Redis until its stale time; False when Redis is unusable."""
        if self.remote is None:
            return True
        key = self.profile_key(email)
        return await self.remote.set(key, entry.encode(), entry.stale_until - now)

    async def delete(self, email: str) -> bool:
        """Drop one email's profile everywhere we can; False if Redis could not be reached."""
        self.near.delete(email)
        if self.remote is None:
            return True
        return await self.remote.delete(self.profile_key(email))

    async def ready(self) -> tuple[bool, str]:
        """Whether the cache is usable, with a short description."""
        if self.remote is None:
            return True, f"memory ({len(self.near)} entries)"
        if await self.remote.ping():
            return True, "redis ok"
        return False, f"redis unreachable ({self.remote.last_error})"

    async def close(self) -> None:
        """Close connections."""
        if self.remote is not None:
            await self.remote.close()
