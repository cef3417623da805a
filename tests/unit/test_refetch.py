"""After a Stripe event: the profile is dropped, and a cached one fetched again once events stop.

Driven directly with a scripted connector, a fake clock and a fake scheduler (no sleeps).
The same seen through POST /webhooks/stripe is in tests/integration/test_webhooks.py.
"""

from __future__ import annotations

import pytest

from aggregator.emails import parse_email
from aggregator.service import ProfileService
from aggregator.tasks import Debouncer
from tests.support.fakes import FakeScheduler, ScriptedConnector, runtime_for
from tests.support.proxy import settings_from

EMAIL = "ada@example.com"


def test_a_burst_of_pokes_ends_in_one_call_after_the_last() -> None:
    scheduler = FakeScheduler()
    fired: list[str] = []
    debouncer: Debouncer[str] = Debouncer(fired.append, scheduler.call_later)
    for _ in range(5):
        debouncer.poke(EMAIL, 2.0)
        scheduler.advance(1.0)
    assert fired == []
    scheduler.advance(1.0)
    assert fired == [EMAIL]
    assert len(debouncer) == 0


def test_keys_are_debounced_apart_and_cancel_forgets_them() -> None:
    scheduler = FakeScheduler()
    fired: list[str] = []
    debouncer: Debouncer[str] = Debouncer(fired.append, scheduler.call_later)
    debouncer.poke("a@example.com", 1.0)
    debouncer.poke("b@example.com", 3.0)
    scheduler.advance(1.0)
    assert fired == ["a@example.com"]
    debouncer.cancel()
    scheduler.advance(5.0)
    assert fired == ["a@example.com"]
    assert scheduler.pending == 0


@pytest.fixture
def scheduler() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
def crm() -> ScriptedConnector:
    return ScriptedConnector("crm", answers={EMAIL: {"plan": "Pro"}})


def make_service(
    crm: ScriptedConnector, scheduler: FakeScheduler, refetch_after: float | None = 2.0
) -> ProfileService:
    settings = settings_from(webhooks={"refetch_after": refetch_after})
    return ProfileService(
        runtime_for(settings, (crm,)), clock=scheduler.clock, call_later=scheduler.call_later
    )


async def test_a_cached_profile_is_fetched_again_once_its_events_stop(
    crm: ScriptedConnector, scheduler: FakeScheduler
) -> None:
    service = make_service(crm, scheduler)
    await service.get(EMAIL)
    crm.answers[EMAIL] = {"plan": "Enterprise"}
    for _ in range(3):  # Stripe sends several events for one change
        assert await service.invalidate(EMAIL) is True
        scheduler.advance(0.5)
    assert service.cached_body(EMAIL) is None
    assert crm.calls[EMAIL] == 1
    scheduler.advance(2.0)
    await service.loads.join()
    assert crm.calls[EMAIL] == 2
    body = service.cached_body(EMAIL)
    assert body is not None
    assert b'"crm_plan":"Enterprise"' in body


async def test_a_profile_nobody_looked_at_is_only_dropped(
    crm: ScriptedConnector, scheduler: FakeScheduler
) -> None:
    service = make_service(crm, scheduler)
    assert await service.invalidate(EMAIL) is True
    scheduler.advance(10.0)
    await service.loads.join()
    assert crm.calls[EMAIL] == 0
    assert scheduler.pending == 0


async def test_refetch_off_only_drops_the_profile(
    crm: ScriptedConnector, scheduler: FakeScheduler
) -> None:
    service = make_service(crm, scheduler, refetch_after=None)
    await service.get(EMAIL)
    await service.invalidate(EMAIL)
    scheduler.advance(10.0)
    await service.loads.join()
    assert crm.calls[EMAIL] == 1
    assert service.cached_body(EMAIL) is None


async def test_the_refetch_looks_the_customer_up_as_stripe_spells_it(
    crm: ScriptedConnector, scheduler: FakeScheduler
) -> None:
    service = make_service(crm, scheduler)
    await service.get(EMAIL)
    await service.invalidate(parse_email("Ada@Example.com"))
    scheduler.advance(2.0)
    await service.loads.join()
    assert [getattr(seen, "as_sent", seen) for seen in crm.seen] == [EMAIL, "Ada@Example.com"]


async def test_closing_the_service_forgets_pending_refetches(
    crm: ScriptedConnector, scheduler: FakeScheduler
) -> None:
    service = make_service(crm, scheduler)
    await service.get(EMAIL)
    await service.invalidate(EMAIL)
    await service.close()
    scheduler.advance(10.0)
    assert crm.calls[EMAIL] == 1
