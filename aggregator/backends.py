"""Where cached profiles are shared between replicas: one small protocol, two backends.

``memory://`` shares nothing (the in-process copy is the only one); Redis, single node or
cluster, is shared by every replica. A Redis that is slow or down never fails a request:
operations are bounded by ``cache.timeout``, a dead pooled connection is replaced and the
command sent once more, errors count as "unavailable", and a breaker skips Redis for a
moment after repeated failures so a dead Redis costs nothing per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    MaxConnectionsError,
    RedisClusterException,
    RedisError,
)

from aggregator.errors import AggregatorError
from aggregator.resilience import CircuitBreaker

log = logging.getLogger("aggregator.cache")

T = TypeVar("T")

LOCK_SKIPPED = ""
MAX_CONNECTIONS = 256
TOMBSTONE = b"P"
RESUBSCRIBE_SECONDS = 1.0
LISTEN_SECONDS = 1.0
# RedisClusterException (e.g. no node reachable) does not derive from RedisError.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)

# Store a profile unless a purge newer than the load that built it is recorded there:
# a fetch that started before a purge must not bring the purged data back.
_SET_UNLESS_PURGED = """
local current = redis.call('GET', KEYS[1])
if current and string.byte(current, 1) == 80 then
  local purged_at = tonumber(string.sub(current, 2))
  if purged_at and purged_at >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class BackendUnavailable(AggregatorError):
    """The shared cache cannot answer now; the caller goes on without it."""


@dataclass(frozen=True, slots=True)
class Purged:
    """What a key holds after a purge: when it happened."""

    at: float


OnPurge = Callable[[str, float], None]


class Backend(Protocol):
    """What the profile store needs from a place that replicas share."""

    shared: bool  # False: nothing leaves this process (memory://)

    async def get(self, key: str) -> bytes | Purged | None:
        """The value, the purge recorded there, or None; BackendUnavailable if it can't say."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | Purged | None]:
        """What ``get`` says of each key, in one round trip; BackendUnavailable if it can't."""

    async def set(self, key: str, value: bytes, ttl: float, *, unless_purged_after: float) -> bool:
        """Store for ``ttl`` seconds unless a purge at or after ``unless_purged_after`` is there."""

    async def delete(self, key: str, *, at: float, remember: float) -> bool:
        """Purge ``key``: remember when for ``remember`` seconds and tell every replica."""

    async def lock(self, key: str, ttl: float) -> str | None:
        """A lock's token; None if held elsewhere; LOCK_SKIPPED if it cannot be taken now."""

    async def unlock(self, key: str, token: str) -> None:
        """Release a lock if it is still ours."""

    async def open(self, on_purge: OnPurge, on_gap: Callable[[], None]) -> None:
        """Start hearing purges from other replicas; ``on_gap`` whenever some may have been
        missed (each time listening starts or resumes)."""

    async def close(self) -> None:
        """Release connections."""

    async def ping(self) -> tuple[bool, str]:
        """Whether it answers now, with a short description."""


class MemoryBackend:
    """``memory://``: nothing is shared; reads find nothing, writes and locks succeed."""

    shared = False

    async def get(self, key: str) -> bytes | Purged | None:
        """Nothing is stored here."""
        return None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | Purged | None]:
        """Nothing is stored here."""
        return [None] * len(keys)

    async def set(self, key: str, value: bytes, ttl: float, *, unless_purged_after: float) -> bool:
        """Nothing to store beyond the in-process copy."""
        return True

    async def delete(self, key: str, *, at: float, remember: float) -> bool:
        """Nothing to drop beyond the in-process copy."""
        return True

    async def lock(self, key: str, ttl: float) -> str | None:
        """Always granted: single-flight already serializes this process."""
        return LOCK_SKIPPED

    async def unlock(self, key: str, token: str) -> None:
        """Nothing to release."""

    async def open(self, on_purge: OnPurge, on_gap: Callable[[], None]) -> None:
        """No other replica to hear from."""

    async def close(self) -> None:
        """Nothing to close."""

    async def ping(self) -> tuple[bool, str]:
        """Always usable."""
        return True, "memory"


def _client(
    url: str, timeout: float, *, read_timeout: float | None, retries: int
) -> Redis | RedisCluster:
    options: dict[str, Any] = {
        "socket_timeout": read_timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 15,
        "max_connections": MAX_CONNECTIONS,
        # A pooled connection found dead (Redis restarted) is replaced and the command
        # sent once more at once; timeouts are not retried (cache.timeout bounds the call).
        "retry": Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)),
    }
    scheme, sep, rest = url.partition("://")
    if scheme.endswith("+cluster"):
        real_url = scheme.removesuffix("+cluster") + sep + rest
        return RedisCluster.from_url(real_url, **options)
    return Redis.from_url(url, **options)


class RedisBackend:
    """Redis (``redis://``, ``rediss://``, ``redis+cluster://``), every call time-bounded."""

    shared = True

    def __init__(self, url: str, timeout: float, channel: str) -> None:
        self.url = url
        self.timeout = timeout
        self.channel = channel
        self.breaker = CircuitBreaker(threshold=3, reset=1.0)
        self.last_error: str | None = None
        self.client = _client(url, timeout, read_timeout=timeout, retries=1)
        self._needs_discovery = isinstance(self.client, RedisCluster)
        self._discovery_lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None

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
            # Our own pool is busy, Redis is fine: unavailable for this call, not an outage.
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

    async def get(self, key: str) -> bytes | Purged | None:
        """The stored bytes, the purge recorded under the key, or None."""
        ok, value = await self._run(lambda: self.client.get(key))
        if not ok:
            raise BackendUnavailable(self.last_error or "busy")
        return _record(value)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | Purged | None]:
        """Several keys in one command (a cluster splits it by slot, one per node)."""
        client = self.client
        if isinstance(client, RedisCluster):
            ok, values = await self._run(lambda: client.mget_nonatomic(list(keys)))
        else:
            ok, values = await self._run(lambda: client.mget(list(keys)))
        if not ok or values is None:
            raise BackendUnavailable(self.last_error or "busy")
        return [_record(value) for value in values]

    async def set(self, key: str, value: bytes, ttl: float, *, unless_purged_after: float) -> bool:
        """Store with an expiry unless a newer purge is recorded; False when not stored."""
        millis = max(1, int(ttl * 1000))
        ok, stored = await self._run(
            lambda: self.client.eval(
                _SET_UNLESS_PURGED, 1, key, value, millis, repr(unless_purged_after)
            )
        )
        return ok and bool(stored)

    async def delete(self, key: str, *, at: float, remember: float) -> bool:
        """Replace the value with a purge record and announce it; False if Redis is out."""
        millis = max(1, int(remember * 1000))
        record = TOMBSTONE + repr(at).encode()
        ok, _ = await self._run(lambda: self.client.set(key, record, px=millis))
        if ok:
            await self._run(lambda: self.client.publish(self.channel, f"{key} {at!r}"))
        return ok

    async def lock(self, key: str, ttl: float) -> str | None:
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
        if token != LOCK_SKIPPED:
            await self._run(lambda: self.client.eval(_UNLOCK, 1, key, token))

    async def open(self, on_purge: OnPurge, on_gap: Callable[[], None]) -> None:
        """Listen for purge announcements in the background, reconnecting as needed."""
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen(on_purge, on_gap))

    async def _listen(self, on_purge: OnPurge, on_gap: Callable[[], None]) -> None:
        # A client of its own: reads block up to LISTEN_SECONDS, and a lost connection
        # must surface here (no silent retry) so that missed announcements are made up for.
        client = _client(self.url, self.timeout, read_timeout=None, retries=0)
        try:
            while True:
                pubsub = client.pubsub()
                try:
                    if isinstance(client, RedisCluster):
                        await client.initialize()  # pub/sub needs the slot map first
                    await pubsub.subscribe(self.channel)
                    # Whatever was announced before this subscription was not heard.
                    on_gap()
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=LISTEN_SECONDS
                        )
                        if message is not None and message.get("type") == "message":
                            _dispatch(message.get("data"), on_purge)
                except REDIS_FAILURES as exc:
                    log.debug("purge announcements interrupted (%s)", type(exc).__name__)
                except Exception as exc:  # the listener must outlive a surprise
                    log.warning("purge announcements failed (%s)", type(exc).__name__)
                finally:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(self.timeout):
                            await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(RESUBSCRIBE_SECONDS)
        finally:
            with contextlib.suppress(*REDIS_FAILURES):
                await client.aclose()

    async def ping(self) -> tuple[bool, str]:
        """True when Redis answers now (bypasses the breaker)."""
        try:
            async with asyncio.timeout(self.timeout):
                if self._needs_discovery:
                    await self._discover()
                await self.client.ping()
        except REDIS_FAILURES as exc:
            self.last_error = type(exc).__name__
            return False, f"redis unreachable ({self.last_error})"
        self.last_error = None
        self.breaker.record_success()
        return True, "redis ok"

    async def close(self) -> None:
        """Stop listening and close the connection pool."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        await self.client.aclose()


def _record(value: object) -> bytes | Purged | None:
    """A stored value as the store sees it: a profile's bytes, a purge record, or None."""
    if not isinstance(value, bytes):
        return None
    if value.startswith(TOMBSTONE):
        try:
            return Purged(float(value[1:]))
        except ValueError:
            return None
    return value


def _dispatch(data: object, on_purge: OnPurge) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    key, _, at = text.rpartition(" ")
    try:
        on_purge(key, float(at))
    except ValueError:
        log.debug("ignoring a malformed purge announcement")


def backend_for(url: str, timeout: float, channel: str) -> Backend:
    """The backend a ``cache.url`` names."""
    if url.startswith("memory://"):
        return MemoryBackend()
    return RedisBackend(url, timeout, channel)
