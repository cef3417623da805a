"""Stripe call limits, on a fake clock: what Stripe documents, for the whole process.

Stripe allows 100 read operations a second in live mode and 25 in test mode (sandbox),
and 25 a second to any one endpoint unless stated otherwise
(https://docs.stripe.com/rate-limits). The limits count calls, not profiles, and are
shared by every connector of the process using the same account.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from connectors.stripe import StripeConnector, StripeSettings
from connectors.stripe_http import CallWindow, LimitSettings, StripeLimits


class FakeClock:
    """Time that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def most_in_one_second(times: list[float]) -> int:
    """The largest number of calls that fall in any window [t, t + 1)."""
    ordered = sorted(times)
    return max(sum(1 for u in ordered if t <= u < t + 1.0) for t in ordered)


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    yield FakeClock()


async def test_a_burst_of_180_calls_never_exceeds_25_in_any_second(clock: FakeClock) -> None:
    """The issue's burst: 60 profiles x 3 calls sent 135 calls in one second."""
    window = CallWindow(25, clock, clock.sleep)
    times: list[float] = []

    async def call() -> None:
        await window.acquire()
        times.append(clock())

    await asyncio.gather(*(call() for _ in range(180)))

    assert len(times) == 180
    assert most_in_one_second(times) == 25
    assert max(times) == pytest.approx(7.0)


async def test_a_fractional_rate_spaces_calls_out(clock: FakeClock) -> None:
    window = CallWindow(0.5, clock, clock.sleep)
    times: list[float] = []
    for _ in range(3):
        await window.acquire()
        times.append(clock())

    assert times == [0.0, 2.0, 4.0]


async def test_each_endpoint_has_its_own_window_inside_the_accounts(clock: FakeClock) -> None:
    limits = StripeLimits(
        LimitSettings(rate=100, endpoint_rate=25, concurrency=1000), clock, clock.sleep
    )
    times: dict[str, list[float]] = {"customers.list": [], "charges.list": []}

    async def call(endpoint: str) -> None:
        async with limits.slot(endpoint):
            times[endpoint].append(clock())

    await asyncio.gather(*(call(e) for e in times for _ in range(60)))

    assert most_in_one_second(times["customers.list"]) == 25
    assert most_in_one_second(times["charges.list"]) == 25
    assert most_in_one_second(times["customers.list"] + times["charges.list"]) <= 50
    assert limits.calls == 120


async def test_the_account_window_holds_across_endpoints(clock: FakeClock) -> None:
    limits = StripeLimits(
        LimitSettings(rate=25, endpoint_rate=25, concurrency=1000), clock, clock.sleep
    )
    times: list[float] = []

    async def call(endpoint: str) -> None:
        async with limits.slot(endpoint):
            times.append(clock())

    endpoints = ["customers.list", "subscriptions.list", "charges.list", "invoices.list"]
    await asyncio.gather(*(call(e) for e in endpoints for _ in range(30)))

    assert most_in_one_second(times) == 25


async def test_calls_in_flight_are_bounded(clock: FakeClock) -> None:
    limits = StripeLimits(
        LimitSettings(rate=1000, endpoint_rate=1000, concurrency=3), clock, clock.sleep
    )
    in_flight = peak = 0

    async def call() -> None:
        nonlocal in_flight, peak
        async with limits.slot("charges.list"):
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0)
            in_flight -= 1

    await asyncio.gather(*(call() for _ in range(20)))

    assert peak == 3


def settings(**values: object) -> StripeSettings:
    base = {"type": "stripe", "api_key": "sk_test_a", "api_base": "http://127.0.0.1:9"}
    return StripeSettings.model_validate(base | values)


async def test_connectors_of_one_account_share_the_limits() -> None:
    async with aiohttp.ClientSession() as session:
        first, second = StripeConnector("a", settings()), StripeConnector("b", settings())
        other = StripeConnector("c", settings(api_key="sk_test_other"))
        for connector in (first, second, other):
            await connector.open(session)

        assert first.limits is second.limits
        assert other.limits is not first.limits


async def test_new_figures_after_a_reload_make_new_limits() -> None:
    async with aiohttp.ClientSession() as session:
        before, after = (
            StripeConnector("a", settings()),
            StripeConnector("a", settings(rate_limit=5)),
        )
        await before.open(session)
        await after.open(session)

        assert after.limits is not before.limits
        assert after.limits.figures.rate == 5


@pytest.mark.parametrize(
    ("key", "rate"), [("sk_test_x", 25), ("rk_test_x", 25), ("sk_live_x", 100), ("rk_live_x", 100)]
)
async def test_the_default_rate_is_stripes_for_the_keys_mode(key: str, rate: float) -> None:
    async with aiohttp.ClientSession() as session:
        connector = StripeConnector("s", settings(api_key=key))
        await connector.open(session)

        assert connector.limits.figures == LimitSettings(
            rate=rate, endpoint_rate=25, concurrency=25
        )
