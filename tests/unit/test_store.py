"""The profile store's policy, driven by a fake clock: entry states, the newest usable copy,
stale fallback, purges that stay final across replicas, the in-process copy's bounds.

Store tests run against both backends: in-process (``memory://``) and a real Redis, where
two stores sharing one namespace are two replicas. Time is the fake clock's; Redis's own
expiry is far beyond what these tests move the clock by, so it never interferes.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack

import orjson
import pytest

from aggregator.backends import BackendUnavailable, Purged, RedisBackend
from aggregator.cache import (
    CacheEntry,
    CachePolicy,
    EntryState,
    NearCache,
    SourceSnapshot,
)
from aggregator.config import CacheSettings
from aggregator.store import Loaded, ProfileStore
from aggregator.tasks import CallLater
from tests.support.fakes import FakeClock, FakeScheduler
from tests.support.net import free_port
from tests.support.redis_server import RedisProcess

EMAIL = "ada@example.com"
TTL, REFRESH_AHEAD, STALE_TTL, NEAR_TTL = 60.0, 30.0, 600.0, 1.0
T0 = 1_800_000_000.0


def policy() -> CachePolicy:
    return CachePolicy(ttl=TTL, stale_ttl=STALE_TTL, refresh_ahead=REFRESH_AHEAD)


def snapshot(plan: str, at: float = T0) -> dict[str, SourceSnapshot]:
    return {"crm": SourceSnapshot({"plan": plan}, at, "ok")}


# -- entries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "state"),
    [
        (0.0, EntryState.FRESH),
        (TTL - 0.1, EntryState.FRESH),
        (TTL, EntryState.REFRESH_AHEAD),
        (TTL + REFRESH_AHEAD - 0.1, EntryState.REFRESH_AHEAD),
        (TTL + REFRESH_AHEAD, EntryState.STALE),
        (TTL + STALE_TTL - 0.1, EntryState.STALE),
        (TTL + STALE_TTL, EntryState.EXPIRED),
    ],
)
def test_an_entry_knows_its_state_at_any_time(age: float, state: EntryState) -> None:
    entry = policy().entry(b"{}", snapshot("Pro"), complete=True, fetched_at=T0)
    assert entry.state(T0 + age) is state


def test_a_profile_with_a_failed_source_is_fresh_only_briefly() -> None:
    entry = policy().entry(b"{}", snapshot("Pro"), complete=False, fetched_at=T0)
    assert entry.state(T0 + 9.9) is EntryState.FRESH
    assert entry.state(T0 + 10.0) is EntryState.REFRESH_AHEAD
    assert entry.stale_until == T0 + TTL + STALE_TTL


def test_an_entry_survives_its_encoding_byte_for_byte() -> None:
    body = b'{"crm_plan":"Pro","profile_cached":true}'
    entry = policy().entry(body, snapshot("Pro"), complete=True, fetched_at=T0)
    decoded = CacheEntry.decode(entry.encode(), REFRESH_AHEAD)
    assert decoded is not None
    assert decoded.body == body
    assert (decoded.fetched_at, decoded.fresh_until, decoded.stale_until) == (
        T0,
        T0 + TTL,
        T0 + TTL + STALE_TTL,
    )
    assert decoded.refresh_until == T0 + TTL + REFRESH_AHEAD
    assert decoded.sources == snapshot("Pro")
    assert decoded.size == entry.size == len(entry.encode()) - 1


@pytest.mark.parametrize("raw", [b"", b"no newline", b"{not json}\n{}", b'{"v": 99}\n{}'])
def test_unreadable_or_foreign_entries_are_ignored(raw: bytes) -> None:
    assert CacheEntry.decode(raw, REFRESH_AHEAD) is None


def test_a_cached_entry_costs_its_bytes_not_an_encoder_buffer() -> None:
    # 10,000 small entries (the memory cache's default count) must not hold orjson's
    # working buffers: that once took RSS from ~100 MB to ~170 MB in benchmark 4.
    body = b'{"crm_plan":"Pro"}'
    tracemalloc.start()
    try:
        entries = [
            policy().entry(body, snapshot(f"Pro {i}"), complete=True, fetched_at=T0)
            for i in range(10_000)
        ]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(entry.size for entry in entries) < 1_500_000
    assert held < 4 * sum(entry.size for entry in entries)


def test_stale_fallback_offers_only_sources_with_fields_still_in_their_window() -> None:
    sources = {
        "recent": SourceSnapshot({"a": 1}, T0, "ok"),
        "old": SourceSnapshot({"b": 2}, T0 - TTL - STALE_TTL, "ok"),
        "empty": SourceSnapshot(None, T0, "not_found"),
    }
    entry = policy().entry(b"{}", sources, complete=True, fetched_at=T0)
    assert set(policy().fallback(entry, T0 + 1)) == {"recent"}
    assert policy().fallback(None, T0) == {}


# -- the in-process copy -----------------------------------------------------------------


def near_entry(size: int, at: float = T0) -> CacheEntry:
    return policy().entry(b"x" * size, {}, complete=True, fetched_at=at)


def test_the_near_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    one = near_entry(400)
    near = NearCache(max_entries=100, max_bytes=3 * one.size)
    for name in ("a", "b", "c"):
        near.put(name, f"key-{name}", near_entry(400), T0 + 10)
    assert near.get("a", T0) is not None  # "a" is now the most recently used
    near.put("d", "key-d", near_entry(400), T0 + 10)
    assert [email for email in "abcd" if near.get(email, T0)] == ["a", "c", "d"]
    assert near.bytes == 3 * one.size


def test_the_near_cache_is_bounded_by_count_and_skips_what_cannot_fit() -> None:
    near = NearCache(max_entries=2, max_bytes=10_000)
    for name in ("a", "b", "c"):
        near.put(name, f"key-{name}", near_entry(10), T0 + 10)
    assert len(near) == 2
    near.put("huge", "key-huge", near_entry(20_000), T0 + 10)
    assert near.get("huge", T0) is None
    assert len(near) == 2


def test_a_near_copy_answers_alone_only_while_fresh_and_within_near_ttl() -> None:
    near = NearCache(max_entries=10, max_bytes=10_000)
    near.put(EMAIL, "key", near_entry(10), T0 + NEAR_TTL)
    assert near.body(EMAIL, T0) == b"x" * 10
    assert near.body(EMAIL, T0 + NEAR_TTL) is None
    near.put(EMAIL, "key", near_entry(10), T0 + 10 * TTL)
    assert near.body(EMAIL, T0 + TTL) is None
    near.ask_again()
    assert near.body(EMAIL, T0) is None
    near.drop_key("key")
    assert len(near) == 0


# -- the store -------------------------------------------------------------------------------


class Upstream:
    """A loader: builds a profile from a source that answers or fails; records what it got."""

    def __init__(self, clock: FakeClock, plan: str = "Pro") -> None:
        self.clock = clock
        self.plan = plan
        self.failing = False
        self.calls = 0
        self.fallbacks: list[dict[str, SourceSnapshot]] = []
        self.during: Callable[[], object] | None = None

    async def __call__(self, previous: Mapping[str, SourceSnapshot]) -> Loaded[bytes]:
        self.calls += 1
        self.fallbacks.append(dict(previous))
        if self.during is not None:
            result = self.during()
            if asyncio.iscoroutine(result):
                await result
        now = self.clock()
        if not self.failing:
            sources = {"crm": SourceSnapshot({"plan": self.plan}, now, "ok")}
            body = orjson.dumps({"plan": self.plan})
            return Loaded(body, sources, True, now, body)
        kept = previous.get("crm")
        if kept is not None:
            sources = {"crm": SourceSnapshot(kept.fields, kept.fetched_at, "unavailable")}
            body = orjson.dumps({**(kept.fields or {}), "stale": True})
        else:
            sources = {"crm": SourceSnapshot(None, now, "unavailable")}
            body = orjson.dumps({"error": "unavailable"})
        return Loaded(body, sources, False, now, body)


@pytest.fixture(params=["memory", "redis"])
def cache_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    return "memory://" if request.param == "memory" else redis_url


@pytest.fixture
async def stores(
    cache_namespace: str, cache_url: str
) -> AsyncIterator[Callable[..., ProfileStore]]:
    """Make stores on one namespace (replicas when the cache is shared); closed at the end."""
    made: list[ProfileStore] = []

    def make(
        url: str | None = None, call_later: CallLater | None = None, **cache: float
    ) -> ProfileStore:
        settings = CacheSettings(
            url=url or cache_url,
            ttl=TTL,
            refresh_ahead=REFRESH_AHEAD,
            stale_ttl=STALE_TTL,
            near_ttl=NEAR_TTL,
            **cache,  # type: ignore[arg-type]
        )
        store = ProfileStore(settings, namespace=cache_namespace, call_later=call_later)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def deadline(seconds: float = 2.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def answer(store: ProfileStore, upstream: Upstream, **options: bool) -> tuple[str, bytes]:
    # A long budget: a replica waiting for another gives up after half of it.
    lookup = await store.answer(
        EMAIL, upstream, now=upstream.clock(), deadline=deadline(10.0), **options
    )
    return lookup.cache, lookup.entry.body


async def test_a_cold_email_is_loaded_once_then_answered_from_cache(
    stores: Callable[..., ProfileStore],
) -> None:
    store, clock = stores(), FakeClock(T0)
    upstream = Upstream(clock)
    assert await answer(store, upstream) == ("miss", b'{"plan":"Pro"}')
    assert await answer(store, upstream) == ("hit", b'{"plan":"Pro"}')
    assert store.near.body(EMAIL, clock()) == b'{"plan":"Pro"}'
    assert upstream.calls == 1
    assert upstream.fallbacks == [{}]


async def test_past_ttl_the_copy_is_answered_while_refreshed(
    stores: Callable[..., ProfileStore],
) -> None:
    store, clock = stores(), FakeClock(T0)
    upstream = Upstream(clock)
    await answer(store, upstream)
    clock.advance(TTL + 1)
    upstream.plan = "Enterprise"
    assert await answer(store, upstream) == ("refresh", b'{"plan":"Pro"}')
    assert upstream.calls == 1
    assert await answer(store, upstream, refresh=True) == ("miss", b'{"plan":"Enterprise"}')
    assert await answer(store, upstream) == ("hit", b'{"plan":"Enterprise"}')


async def test_a_stale_copy_stands_in_for_a_failing_source(
    stores: Callable[..., ProfileStore],
) -> None:
    store, clock = stores(), FakeClock(T0)
    upstream = Upstream(clock)
    await answer(store, upstream)
    clock.advance(TTL + REFRESH_AHEAD + 1)
    upstream.failing = True
    assert await answer(store, upstream) == ("miss", b'{"plan":"Pro","stale":true}')
    assert upstream.fallbacks[-1] == {"crm": SourceSnapshot({"plan": "Pro"}, T0, "ok")}


async def test_an_expired_copy_is_of_no_use(stores: Callable[..., ProfileStore]) -> None:
    store, clock = stores(), FakeClock(T0)
    upstream = Upstream(clock)
    await answer(store, upstream)
    clock.advance(TTL + STALE_TTL + 1)
    upstream.failing = True
    assert await answer(store, upstream) == ("miss", b'{"error":"unavailable"}')
    assert upstream.fallbacks[-1] == {}


@pytest.mark.parametrize("age", [1.0, TTL + REFRESH_AHEAD + 1], ids=["fresh", "stale"])
async def test_a_purged_copy_is_neither_answered_nor_a_fallback(
    stores: Callable[..., ProfileStore], age: float
) -> None:
    store, clock = stores(), FakeClock(T0)
    upstream = Upstream(clock)
    await answer(store, upstream)
    assert await store.purge(EMAIL, clock())
    clock.advance(age)
    upstream.failing = True
    assert await answer(store, upstream) == ("miss", b'{"error":"unavailable"}')
    assert upstream.fallbacks[-1] == {}


@pytest.mark.parametrize("cache_url", ["redis"], indirect=True)
@pytest.mark.parametrize("age", [NEAR_TTL + 0.1, TTL + REFRESH_AHEAD + 1], ids=["fresh", "stale"])
async def test_a_purge_on_one_replica_is_final_on_another_once_near_ttl_has_passed(
    stores: Callable[..., ProfileStore], age: float
) -> None:
    # The stores are not opened: no purge announcement arrives, as when one is lost.
    first, second, clock = stores(), stores(), FakeClock(T0)
    loads_first, loads_second = Upstream(clock), Upstream(clock)
    await answer(first, loads_first)
    assert await answer(second, loads_second) == ("hit", b'{"plan":"Pro"}')
    assert await first.purge(EMAIL, clock.now + 0.01)
    clock.advance(age)
    loads_second.failing = True
    assert await answer(second, loads_second) == ("miss", b'{"error":"unavailable"}')
    assert loads_second.fallbacks == [{}]


@pytest.mark.parametrize("cache_url", ["redis"], indirect=True)
async def test_a_purge_announcement_drops_near_copies_at_once(
    stores: Callable[..., ProfileStore],
) -> None:
    first, second, clock = stores(), stores(), FakeClock(T0)
    async with AsyncExitStack() as stack:
        for store in (first, second):
            await store.open()
            stack.push_async_callback(store.backend.close)
        await asyncio.sleep(0.2)  # both listeners subscribed
        await answer(first, Upstream(clock))
        await answer(second, Upstream(clock))
        assert second.near.body(EMAIL, clock()) is not None
        assert await first.purge(EMAIL, clock())
        for _ in range(200):
            if second.near.body(EMAIL, clock()) is None:
                break
            await asyncio.sleep(0.01)
        assert second.near.body(EMAIL, clock()) is None


async def test_a_load_that_started_before_a_purge_keeps_nothing(
    stores: Callable[..., ProfileStore], cache_url: str
) -> None:
    store, clock = stores(), FakeClock(T0)
    upstream = Upstream(clock)
    upstream.during = lambda: store.purge(EMAIL, clock())
    cache, body = await answer(store, upstream)
    assert (cache, body) == ("miss", b'{"plan":"Pro"}')
    upstream.during = None
    other = stores() if cache_url != "memory://" else store
    for replica in (store, other):
        replica.near.drop(EMAIL)
        again = Upstream(clock)
        assert (await answer(replica, again))[0] == "miss", "the purged load was kept"


@pytest.mark.parametrize("cache_url", ["redis"], indirect=True)
async def test_a_replica_waits_for_the_one_loading_instead_of_loading_too(
    stores: Callable[..., ProfileStore],
) -> None:
    first, second, clock = stores(), stores(), FakeClock(T0)
    gate = asyncio.Event()
    slow = Upstream(clock)
    slow.during = gate.wait
    loading = asyncio.ensure_future(answer(first, slow))
    while slow.calls == 0:
        await asyncio.sleep(0.01)
    loads_second = Upstream(clock)
    waiting = asyncio.ensure_future(answer(second, loads_second))
    await asyncio.sleep(0.05)
    gate.set()
    assert await loading == ("miss", b'{"plan":"Pro"}')
    assert await waiting == ("shared", b'{"plan":"Pro"}')
    assert loads_second.calls == 0


async def test_with_redis_unreachable_the_in_process_copy_keeps_answering(
    cache_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = CacheSettings(
        url=f"redis://127.0.0.1:{free_port()}/0",
        ttl=TTL,
        refresh_ahead=REFRESH_AHEAD,
        stale_ttl=STALE_TTL,
        near_ttl=NEAR_TTL,
    )
    store, clock = ProfileStore(settings, namespace=cache_namespace), FakeClock(T0)
    assert isinstance(store.backend, RedisBackend)
    upstream = Upstream(clock)
    try:
        assert await answer(store, upstream) == ("miss", b'{"plan":"Pro"}')
        clock.advance(NEAR_TTL + 1)
        assert await answer(store, upstream) == ("hit", b'{"plan":"Pro"}')
        clock.advance(TTL + REFRESH_AHEAD)
        upstream.failing = True
        assert await answer(store, upstream) == ("miss", b'{"plan":"Pro","stale":true}')
        assert await store.ready() == (False, "redis unreachable (ConnectionError)")
    finally:
        await store.close()
    assert upstream.calls == 2
    assert "redis unavailable (ConnectionError); answering uncached" in caplog.text


async def test_a_lost_announcement_makes_every_near_copy_ask_again(
    stores: Callable[..., ProfileStore],
) -> None:
    store, clock = stores(), FakeClock(T0)
    upstream = Upstream(clock)
    await answer(store, upstream)
    store.near.ask_again()
    assert store.near.body(EMAIL, clock()) is None
    assert store.answer_near(EMAIL, clock()) is None
    assert await answer(store, upstream) == ("hit", b'{"plan":"Pro"}')
    assert store.answer_near(EMAIL, clock()) is not None
    assert upstream.calls == 1


async def test_announcements_resume_after_a_redis_restart(
    redis_process: RedisProcess, cache_namespace: str
) -> None:
    def replica() -> ProfileStore:
        settings = CacheSettings(url=redis_process.url, ttl=TTL, near_ttl=300)
        return ProfileStore(settings, namespace=cache_namespace)

    first, second, clock = replica(), replica(), FakeClock(T0)
    await first.open()
    await second.open()
    try:
        await answer(first, Upstream(clock))
        await answer(second, Upstream(clock))
        redis_process.stop()
        redis_process.start()
        # Announcements made while the listener was away are lost: every near copy must
        # ask Redis again once the listener is back, and later announcements arrive.
        for _ in range(300):
            if second.answer_near(EMAIL, clock()) is None:
                break
            await asyncio.sleep(0.01)
        assert second.answer_near(EMAIL, clock()) is None, "near copies were not re-checked"
        await answer(first, Upstream(clock))
        await answer(second, Upstream(clock))
        assert second.near.body(EMAIL, clock()) is not None
        assert await first.purge(EMAIL, clock())
        for _ in range(300):
            if second.near.body(EMAIL, clock()) is None:
                break
            await asyncio.sleep(0.01)
        assert second.near.body(EMAIL, clock()) is None, "the announcement did not arrive"
    finally:
        await first.close()
        await second.close()


# -- near copies renewed in the background ---------------------------------------------------


def counting_reads(store: ProfileStore) -> list[int]:
    """Count the store's batched reads (how many keys each) from now on."""
    batches: list[int] = []
    get_many = store.backend.get_many

    async def counted(keys: Sequence[str]) -> list[bytes | Purged | None]:
        batches.append(len(keys))
        return await get_many(keys)

    store.backend.get_many = counted  # type: ignore[method-assign]
    return batches


async def test_hits_near_the_end_of_near_ttl_renew_their_copies_in_one_background_read(
    stores: Callable[..., ProfileStore], cache_url: str
) -> None:
    scheduler = FakeScheduler(FakeClock(T0))
    store, clock = stores(call_later=scheduler.call_later), scheduler.clock
    upstream = Upstream(clock)
    emails = [f"user{i}@example.com" for i in range(3)]
    for email in emails:
        await store.answer(email, upstream, now=clock(), deadline=deadline())
    batches = counting_reads(store)
    scheduler.advance(NEAR_TTL * 0.6)
    assert all(store.near.body(email, clock()) == b'{"plan":"Pro"}' for email in emails)
    if cache_url == "memory://":  # the only copy: nothing to renew, ever
        assert scheduler.pending == 0
        return
    assert scheduler.pending == 1  # one batch for every copy in its last stretch
    scheduler.advance(NEAR_TTL * 0.1)
    await store.idle()
    assert batches == [3]
    scheduler.advance(NEAR_TTL * 0.6)  # past the first near_ttl: still answered alone
    assert all(store.near.body(email, clock()) == b'{"plan":"Pro"}' for email in emails)
    assert upstream.calls == 3


@pytest.mark.parametrize("cache_url", ["redis"], indirect=True)
async def test_a_renewal_that_finds_a_purge_drops_the_copy(
    stores: Callable[..., ProfileStore],
) -> None:
    # Not opened: the purge announcement never arrives, as when it is lost.
    scheduler = FakeScheduler(FakeClock(T0))
    first, second = stores(), stores(call_later=scheduler.call_later)
    clock = scheduler.clock
    await answer(first, Upstream(clock))
    assert await answer(second, Upstream(clock)) == ("hit", b'{"plan":"Pro"}')
    assert await first.purge(EMAIL, clock() + 0.01)
    scheduler.advance(NEAR_TTL * 0.6)
    assert second.near.body(EMAIL, clock()) == b'{"plan":"Pro"}'
    scheduler.advance(NEAR_TTL * 0.1)
    await second.idle()
    assert second.near.body(EMAIL, clock()) is None
    assert second.answer_near(EMAIL, clock()) is None


@pytest.mark.parametrize("cache_url", ["redis"], indirect=True)
async def test_with_renewals_a_purge_is_still_final_within_near_ttl(
    stores: Callable[..., ProfileStore],
) -> None:
    scheduler = FakeScheduler(FakeClock(T0))
    first, second = stores(), stores(call_later=scheduler.call_later)
    clock = scheduler.clock
    await answer(first, Upstream(clock))
    await answer(second, Upstream(clock))
    purged_at: float | None = None
    answered_after_purge = 0.0
    for step in range(60):  # 3 s of steady hits, 50 ms apart; the purge at 1.3 s
        scheduler.advance(0.05)
        await second.idle()
        if step == 25:
            purged_at = clock()
            assert await first.purge(EMAIL, purged_at)
        if second.near.body(EMAIL, clock()) is not None and purged_at is not None:
            answered_after_purge = clock() - purged_at
    assert purged_at is not None
    assert 0 < answered_after_purge < NEAR_TTL


@pytest.mark.parametrize("cache_url", ["redis"], indirect=True)
async def test_a_renewal_while_redis_is_out_keeps_the_copy_like_a_request_would(
    stores: Callable[..., ProfileStore],
) -> None:
    scheduler = FakeScheduler(FakeClock(T0))
    store, clock = stores(call_later=scheduler.call_later), scheduler.clock
    await answer(store, Upstream(clock))

    async def unavailable(keys: Sequence[str]) -> list[bytes | Purged | None]:
        raise BackendUnavailable("down")

    store.backend.get_many = unavailable  # type: ignore[method-assign]
    scheduler.advance(NEAR_TTL * 0.6)
    assert store.near.body(EMAIL, clock()) is not None
    scheduler.advance(NEAR_TTL * 0.1)
    await store.idle()
    scheduler.advance(NEAR_TTL * 0.6)
    assert store.near.body(EMAIL, clock()) == b'{"plan":"Pro"}'
