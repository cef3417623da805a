"""Circuit breakers and rate limits on a fake clock: when calls go through, and when not."""

from __future__ import annotations

import pytest

from aggregator.backends import BackendUnavailable, RedisBackend
from aggregator.resilience import CircuitBreaker, RateLimiter
from tests.support.fakes import FakeClock, ScriptedConnector
from tests.support.net import free_port


def test_the_breaker_opens_at_the_threshold_and_lets_one_probe_through_after_reset() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, reset=30.0, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert (breaker.state, breaker.allow()) == ("closed", True)
    breaker.record_failure()
    assert (breaker.state, breaker.allow()) == ("open", False)
    clock.advance(29.9)
    assert breaker.allow() is False
    clock.advance(0.1)
    assert breaker.state == "half_open"
    assert breaker.allow() is True
    assert breaker.allow() is False, "a second probe while the first one runs"
    breaker.record_failure()
    assert (breaker.state, breaker.allow()) == ("open", False)
    clock.advance(30.0)
    assert breaker.allow() is True
    breaker.record_success()
    assert (breaker.state, breaker.allow(), breaker.failures) == ("closed", True, 0)


def test_a_breaker_with_threshold_zero_never_opens() -> None:
    breaker = CircuitBreaker(threshold=0, reset=1.0, clock=FakeClock())
    for _ in range(100):
        breaker.record_failure()
    assert breaker.allow()


def test_the_rate_limiter_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3.0, clock=clock)
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert [limiter.try_acquire() for _ in range(2)] == [True, False]
    clock.advance(10.0)
    assert sum(limiter.try_acquire() for _ in range(10)) == 3


async def test_an_open_circuit_answers_unavailable_without_calling_the_upstream() -> None:
    clock = FakeClock()
    crm = ScriptedConnector("crm", answers={"ada@example.com": {"plan": "Pro"}})
    crm.circuit = CircuitBreaker(threshold=2, reset=30.0, clock=clock)
    crm.failing = True
    first = [await crm.fetch("ada@example.com") for _ in range(2)]
    blocked = await crm.fetch("ada@example.com")
    crm.failing = False
    still_blocked = await crm.fetch("ada@example.com")
    clock.advance(30.0)
    probe = await crm.fetch("ada@example.com")
    assert [o.status for o in first] == ["unavailable", "unavailable"]
    assert (blocked.status, blocked.detail, blocked.attempts) == ("unavailable", "circuit open", 0)
    assert still_blocked.status == "unavailable"
    assert probe.status == "ok"
    assert crm.calls["ada@example.com"] == 3
    assert crm.circuit.state == "closed"


async def test_the_redis_breaker_skips_an_unreachable_redis_until_its_reset() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", 0.25, "channel")
    clock = FakeClock()
    backend.breaker = CircuitBreaker(threshold=3, reset=1.0, clock=clock)
    try:
        for _ in range(3):
            with pytest.raises(BackendUnavailable):
                await backend.get("key")
        assert backend.breaker.state == "open"
        with pytest.raises(BackendUnavailable):
            await backend.get("key")
        assert backend.breaker.failures == 3, "an open breaker must not even try"
        clock.advance(1.0)
        with pytest.raises(BackendUnavailable):
            await backend.get("key")
        assert backend.breaker.failures == 4, "the half-open probe tried, and failed"
    finally:
        await backend.close()
