"""The profile service driven directly: a scripted connector, a fake clock, no sleeps.

Fresh, refresh-ahead, stale, expired and purged profiles, single-flight, one background
refresh per email, the email object connectors receive, and a runtime swapped mid-flight.
The same behaviour seen over HTTP is in tests/integration/test_server.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from aggregator.emails import Email
from aggregator.service import ProfileService
from tests.support.fakes import FakeClock, ScriptedConnector, runtime_for
from tests.support.proxy import settings_from

EMAIL = "ada@example.com"
TTL, REFRESH_AHEAD, STALE_TTL = 60.0, 30.0, 600.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def crm() -> ScriptedConnector:
    return ScriptedConnector("crm", answers={EMAIL: {"plan": "Pro", "seats": 12}})


@pytest.fixture
def service(clock: FakeClock, crm: ScriptedConnector) -> Iterator[ProfileService]:
    settings = settings_from(
        cache={"ttl": TTL, "refresh_ahead": REFRESH_AHEAD, "stale_ttl": STALE_TTL}
    )
    yield ProfileService(runtime_for(settings, (crm,)), clock=clock)


async def profile(service: ProfileService, email: str = EMAIL) -> tuple[str, dict[str, Any]]:
    """(how it was answered, the decoded body), through the hot path first like the handler."""
    body = service.cached_body(email)
    if body is not None:
        return "hit", orjson.loads(body)
    answer = await service.get(email)
    return answer.cache, orjson.loads(answer.body)


def counted(service: ProfileService, result: str) -> float:
    child = service.metrics.cache.children.get((result,))
    return child.value if child is not None else 0.0


async def test_a_fresh_profile_is_answered_from_cache(
    service: ProfileService, crm: ScriptedConnector, clock: FakeClock
) -> None:
    first = await profile(service)
    clock.advance(TTL - 1)
    second = await profile(service)
    assert first[0] == "miss"
    assert first[1]["crm_plan"] == "Pro"
    assert first[1]["profile_cached"] is False
    assert second == ("hit", {**first[1], "profile_cached": True})
    assert crm.calls[EMAIL] == 1


async def test_refresh_ahead_answers_at_once_and_refreshes_once_in_the_background(
    service: ProfileService, crm: ScriptedConnector, clock: FakeClock
) -> None:
    await profile(service)
    clock.advance(TTL + 1)
    crm.answers[EMAIL] = {"plan": "Enterprise"}
    crm.gate = asyncio.Event()
    answers = [await profile(service) for _ in range(3)]
    assert [cache for cache, _ in answers] == ["refresh"] * 3
    assert all(body["crm_plan"] == "Pro" for _, body in answers)
    crm.gate.set()
    await service.refreshes.join()
    assert crm.calls[EMAIL] == 2
    cache, refreshed = await profile(service)
    assert (cache, refreshed["crm_plan"]) == ("hit", "Enterprise")
    assert counted(service, "refresh") == 3


async def test_a_stale_profile_keeps_a_failing_sources_last_fields(
    service: ProfileService, crm: ScriptedConnector, clock: FakeClock
) -> None:
    await profile(service)
    clock.advance(TTL + REFRESH_AHEAD + 1)
    crm.failing = True
    cache, body = await profile(service)
    assert cache == "miss"
    assert body["crm_plan"] == "Pro"
    assert body["crm_error"] == "unavailable"
    assert body["profile_stale"] is True
    assert body["profile_complete"] is False
    assert counted(service, "stale") == 1


async def test_an_expired_profile_keeps_nothing_of_a_failing_source(
    service: ProfileService, crm: ScriptedConnector, clock: FakeClock
) -> None:
    await profile(service)
    clock.advance(TTL + STALE_TTL + 1)
    crm.failing = True
    _, body = await profile(service)
    assert "crm_plan" not in body
    assert body["crm_error"] == "unavailable"
    assert body["profile_stale"] is False


async def test_a_purged_profile_is_fetched_again_and_never_served_stale(
    service: ProfileService, crm: ScriptedConnector, clock: FakeClock
) -> None:
    await profile(service)
    assert await service.purge(EMAIL)
    assert service.cached_body(EMAIL) is None
    clock.advance(TTL + 1)
    crm.failing = True
    cache, body = await profile(service)
    assert cache == "miss"
    assert "crm_plan" not in body
    assert body["profile_stale"] is False


async def test_a_profile_with_a_failed_source_is_fetched_again_after_ten_seconds(
    service: ProfileService, crm: ScriptedConnector, clock: FakeClock
) -> None:
    crm.failing = True
    await profile(service)
    clock.advance(9)
    assert (await profile(service))[0] == "hit"
    crm.failing = False
    clock.advance(REFRESH_AHEAD + 2)
    cache, body = await profile(service)
    assert (cache, body["crm_plan"]) == ("miss", "Pro")
    assert crm.calls[EMAIL] == 2


async def test_concurrent_requests_for_one_email_cause_one_fetch(
    service: ProfileService, crm: ScriptedConnector
) -> None:
    crm.gate = asyncio.Event()
    requests = [asyncio.ensure_future(service.get(EMAIL)) for _ in range(50)]
    while not crm.calls:
        await asyncio.sleep(0)
    assert EMAIL in service.loads
    crm.gate.set()
    answers = await asyncio.gather(*requests)
    assert crm.calls[EMAIL] == 1
    assert {answer.body for answer in answers} == {answers[0].body}
    assert EMAIL not in service.loads


async def test_connectors_receive_the_email_as_it_was_passed(
    service: ProfileService, crm: ScriptedConnector
) -> None:
    email = Email(EMAIL, "Ada@Example.com")
    await service.get(email)
    (seen,) = crm.seen
    assert seen is email
    assert isinstance(seen, Email)
    assert seen.as_sent == "Ada@Example.com"


async def test_preview_bypasses_the_cache_and_names_each_connectors_keys(
    service: ProfileService, crm: ScriptedConnector
) -> None:
    await service.get(EMAIL)
    answer = await service.preview(EMAIL)
    assert answer.cache == "bypass"
    assert answer.contributed == {"crm": ["crm_plan", "crm_seats"]}
    assert crm.calls[EMAIL] == 2


async def test_a_swapped_runtime_serves_new_requests_while_started_ones_finish(
    service: ProfileService, crm: ScriptedConnector, clock: FakeClock
) -> None:
    crm.gate = asyncio.Event()
    started = asyncio.ensure_future(service.get(EMAIL))
    while not crm.calls:
        await asyncio.sleep(0)
    billing = ScriptedConnector("billing", answers={"bob@example.com": {"plan": "Gold"}})
    service.use(runtime_for(service.settings, (billing,)))
    _, bob = await profile(service, "bob@example.com")
    crm.gate.set()
    ada = orjson.loads((await started).body)
    assert bob["billing_plan"] == "Gold"
    assert "crm_plan" not in bob
    assert ada["crm_plan"] == "Pro"
    assert service.connectors == (billing,)
