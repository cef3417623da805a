"""The proxy end to end over HTTP: auth, validation, the answer, the deadline, single-flight."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import orjson
import pytest

from aggregator.keys import SERVICE
from tests.support.fakes import FakeClock
from tests.support.proxy import TOKEN, running_proxy, settings_from
from tests.support.redis_server import RedisProcess
from tests.support.upstreams import FakeCrm

pytestmark = pytest.mark.asyncio


@pytest.fixture
def clock() -> FakeClock:
    """Time for cached profiles, moved by the test."""
    return FakeClock()


def crm_connector(crm: FakeCrm, **extra: object) -> dict[str, object]:
    return {"type": "rest", "url": crm.template, "select": "data[0]", "timeout": 0.5, **extra}


async def test_profile_is_flat_prefixed_json_with_meta(crm: FakeCrm) -> None:
    async with running_proxy(settings_from({"crm": crm_connector(crm)})) as proxy:
        status, body = await proxy.profile("Ada@Example.com ")
    assert status == 200
    assert body["crm_plan_name"] == "Pro"
    assert body["crm_tags"] == "vip, beta"
    assert body["crm_seats"] == 12
    assert body["profile_complete"] is True
    assert body["profile_cached"] is False
    assert body["profile_stale"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["profile_fetched_at"])
    assert all(not isinstance(v, (dict, list)) for v in body.values())
    assert all(re.fullmatch(r"[a-z0-9_]+", k) for k in body)
    assert crm.calls == {"ada@example.com": 1}


async def test_second_request_is_served_from_cache(crm: FakeCrm) -> None:
    async with running_proxy(settings_from({"crm": crm_connector(crm)})) as proxy:
        await proxy.profile("ada@example.com")
        status, body = await proxy.profile("ADA@example.com")
    assert status == 200
    assert body["profile_cached"] is True
    assert body["crm_plan_name"] == "Pro"
    assert crm.calls["ada@example.com"] == 1


async def test_unknown_customer_gets_only_meta_keys(crm: FakeCrm) -> None:
    async with running_proxy(settings_from({"crm": crm_connector(crm)})) as proxy:
        status, body = await proxy.profile("nobody@example.com")
    assert status == 200
    meta = {"profile_complete", "profile_fetched_at", "profile_cached", "profile_stale"}
    assert set(body) == meta
    assert body["profile_complete"] is True


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x", TOKEN[:-1]])
async def test_missing_or_wrong_token_is_401(crm: FakeCrm, token: str | None) -> None:
    async with running_proxy(settings_from({"crm": crm_connector(crm)})) as proxy:
        status, body = await proxy.profile("ada@example.com", token=token)
    assert status == 401
    assert "api_token" in body["error"]
    assert crm.calls == {}


async def test_every_configured_token_is_accepted() -> None:
    async with running_proxy(settings_from()) as proxy:
        first, _ = await proxy.profile("ada@example.com")
        second, _ = await proxy.profile("ada@example.com", token="second-token-abcdefgh")
    assert (first, second) == (200, 200)


@pytest.mark.parametrize(
    ("email", "message"),
    [
        (None, "missing"),
        ("", "empty"),
        ("   ", "empty"),
        ("a" * 250 + "@b.co", "longer"),
        ("not-an-email", "valid"),
        ("a@b", "valid"),
        ("a@@b.com", "valid"),
        ("a\r\nb@example.com", "valid"),
    ],
)
async def test_bad_email_is_400_with_a_message(email: str | None, message: str) -> None:
    async with running_proxy(settings_from()) as proxy:
        status, body = await proxy.profile(email)
    assert status == 400
    assert message in body["error"]


async def test_auth_is_checked_before_the_email() -> None:
    async with running_proxy(settings_from()) as proxy:
        status, _ = await proxy.profile("not-an-email", token="wrong")
    assert status == 401


async def test_slow_connector_times_out_within_the_deadline(
    crm: FakeCrm, slow_crm: FakeCrm
) -> None:
    settings = settings_from(
        {
            "crm": crm_connector(crm),
            "slow": {"type": "rest", "url": slow_crm.template, "select": "data[0]", "timeout": 5},
        },
        server={"deadline": 0.6},
    )
    async with running_proxy(settings) as proxy:
        started = time.monotonic()
        status, body = await proxy.profile("ada@example.com")
        elapsed = time.monotonic() - started
    assert status == 200
    assert elapsed < 0.6 + 0.1, elapsed
    assert body["slow_error"] == "timeout"
    assert body["crm_plan_name"] == "Pro"
    assert body["profile_complete"] is False


async def test_failing_connector_reports_error_not_5xx(crm: FakeCrm) -> None:
    crm.fail_with = 500
    async with running_proxy(settings_from({"crm": crm_connector(crm, retries=0)})) as proxy:
        status, body = await proxy.profile("ada@example.com")
    assert status == 200
    assert body["crm_error"] == "error"
    assert body["profile_complete"] is False
    assert "crm_plan_name" not in body


async def test_unreachable_connector_is_unavailable() -> None:
    settings = settings_from(
        {"crm": {"type": "rest", "url": "http://127.0.0.1:1/c?e={email}", "retries": 0}}
    )
    async with running_proxy(settings) as proxy:
        status, body = await proxy.profile("ada@example.com")
    assert status == 200
    assert body["crm_error"] == "unavailable"


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_concurrent_cold_requests_reach_the_upstream_once(
    crm: FakeCrm, redis_url: str, cache_namespace: str, backend: str
) -> None:
    crm.delay["ada@example.com"] = 0.2
    url = "memory://" if backend == "memory" else redis_url
    settings = settings_from(
        {"crm": crm_connector(crm)}, cache_url=url, cache={"namespace": cache_namespace}
    )
    async with running_proxy(settings) as proxy:
        answers = await asyncio.gather(*(proxy.profile("ada@example.com") for _ in range(200)))
    assert {status for status, _ in answers} == {200}
    assert all(body["crm_plan_name"] == "Pro" for _, body in answers)
    assert crm.calls["ada@example.com"] == 1


async def test_redis_cache_survives_a_restart_of_the_proxy(
    crm: FakeCrm, redis_url: str, cache_namespace: str
) -> None:
    settings = settings_from(
        {"crm": crm_connector(crm)}, cache_url=redis_url, cache={"namespace": cache_namespace}
    )
    async with running_proxy(settings) as proxy:
        await proxy.profile("ada@example.com")
    async with running_proxy(settings) as proxy:
        status, body = await proxy.profile("ada@example.com")
    assert status == 200
    assert body["profile_cached"] is True
    assert body["crm_plan_name"] == "Pro"
    assert crm.calls["ada@example.com"] == 1


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_expired_profile_is_served_stale_when_the_upstream_fails(
    crm: FakeCrm, redis_url: str, cache_namespace: str, backend: str, clock: FakeClock
) -> None:
    url = "memory://" if backend == "memory" else redis_url
    settings = settings_from(
        {"crm": crm_connector(crm, retries=0)},
        cache_url=url,
        cache={"namespace": cache_namespace, "ttl": 60, "near_ttl": 0},
    )
    async with running_proxy(settings, clock=clock) as proxy:
        await proxy.profile("ada@example.com")
        clock.advance(61)
        crm.fail_with = 503
        status, body = await proxy.profile("ada@example.com")
    assert status == 200
    assert body["profile_stale"] is True
    assert body["crm_plan_name"] == "Pro"
    assert body["crm_error"] == "error"
    assert crm.calls["ada@example.com"] == 2


async def test_stale_answers_are_counted_in_metrics(crm: FakeCrm, clock: FakeClock) -> None:
    settings = settings_from({"crm": crm_connector(crm, retries=0)}, cache={"ttl": 60})
    async with running_proxy(settings, clock=clock) as proxy:
        await proxy.profile("ada@example.com")
        clock.advance(61)
        crm.fail_with = 500
        await proxy.profile("ada@example.com")
        await proxy.profile("nope", token="bad")
        _, metrics = await proxy.get("/metrics")
    assert 'aggregator_cache_total{result="stale"} 1.0' in metrics
    assert 'aggregator_requests_total{route="profile",status="401"} 1.0' in metrics


async def test_refresh_ahead_answers_from_cache_and_refreshes_in_background(
    crm: FakeCrm, clock: FakeClock
) -> None:
    settings = settings_from({"crm": crm_connector(crm)}, cache={"ttl": 60, "refresh_ahead": 60})
    async with running_proxy(settings, clock=clock) as proxy:
        refreshes = proxy.app[SERVICE].refreshes
        await proxy.profile("ada@example.com")
        clock.advance(61)
        crm.contacts["ada@example.com"]["seats"] = 99
        crm.delay["ada@example.com"] = 0.3
        _, quick = await proxy.profile("ada@example.com")
        answered_while_refreshing = "ada@example.com" in refreshes
        await refreshes.join()
        _, refreshed = await proxy.profile("ada@example.com")
    assert quick["crm_seats"] == 12
    assert quick["profile_cached"] is True
    assert answered_while_refreshing
    assert refreshed["crm_seats"] == 99
    assert crm.calls["ada@example.com"] == 2


async def test_a_failing_connector_keeps_its_last_good_fields(
    crm: FakeCrm, slow_crm: FakeCrm, clock: FakeClock
) -> None:
    slow_crm.default_delay = 0
    settings = settings_from(
        {
            "crm": crm_connector(crm, retries=0),
            "other": {"type": "rest", "url": slow_crm.template, "select": "data[0]"},
        },
        cache={"ttl": 60},
    )
    async with running_proxy(settings, clock=clock) as proxy:
        await proxy.profile("ada@example.com")
        clock.advance(61)
        crm.fail_with = 500
        slow_crm.contacts["ada@example.com"] = {"score": 4}
        _, body = await proxy.profile("ada@example.com")
    assert body["crm_plan_name"] == "Pro"
    assert body["other_score"] == 4
    assert body["profile_stale"] is True


async def test_redis_down_answers_uncached_and_readyz_says_degraded(
    crm: FakeCrm, redis_process: RedisProcess
) -> None:
    settings = settings_from({"crm": crm_connector(crm)}, cache_url=redis_process.url)
    async with running_proxy(settings) as proxy:
        ready_status, ready_body = await proxy.get("/readyz")
        redis_process.stop()
        status, body = await proxy.profile("ada@example.com")
        down_status, down_body = await proxy.get("/readyz")
        redis_process.start()
        back_status, back_body = await proxy.get("/readyz")
    assert (ready_status, down_status, back_status) == (200, 200, 200)
    assert orjson.loads(ready_body)["status"] == "ok"
    assert status == 200
    assert body["crm_plan_name"] == "Pro"
    down = orjson.loads(down_body)
    assert down["status"] == "degraded"
    assert down["cache"]["ok"] is False
    assert down["cache"]["degraded"] is True
    assert "redis unreachable" in down["cache"]["detail"]
    assert down["config"]["ok"] is True
    assert "crm" in down["connectors"]
    assert orjson.loads(back_body)["cache"] == {"ok": True, "degraded": False, "detail": "redis ok"}


async def test_after_a_redis_restart_replicas_reconnect_and_share_again(
    crm: FakeCrm, redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # Both replicas hold pooled connections that the restart kills: the first command of
    # each must go through on a fresh connection, so the second replica reads what the
    # first one fetched, and nobody reports Redis as unavailable.
    settings = settings_from(
        {"crm": crm_connector(crm)}, cache_url=redis_process.url, cache={"near_ttl": 0}
    )
    async with running_proxy(settings) as first, running_proxy(settings) as second:
        await first.profile("bob@example.com")
        await second.profile("bob@example.com")
        redis_process.stop()
        redis_process.start()
        with caplog.at_level(logging.WARNING, logger="aggregator.cache"):
            _, fetched = await first.profile("ada@example.com")
            _, shared = await second.profile("ada@example.com")
    assert fetched["profile_cached"] is False
    assert shared["profile_cached"] is True
    assert shared["crm_plan_name"] == "Pro"
    assert crm.calls["ada@example.com"] == 1
    assert "redis unavailable" not in caplog.text


async def test_health_and_metrics(crm: FakeCrm) -> None:
    async with running_proxy(settings_from({"crm": crm_connector(crm)})) as proxy:
        await proxy.profile("ada@example.com")
        await proxy.profile("ada@example.com")
        health, _ = await proxy.get("/healthz")
        ready, ready_body = await proxy.get("/readyz")
        metrics_status, metrics = await proxy.get("/metrics")
    assert (health, ready, metrics_status) == (200, 200, 200)
    assert '"cache"' in ready_body
    assert 'aggregator_cache_total{result="hit"} 1.0' in metrics
    assert 'aggregator_cache_total{result="miss"} 1.0' in metrics
    assert 'aggregator_connector_outcomes_total{connector="crm",status="ok"} 1.0' in metrics
    assert 'aggregator_requests_total{route="profile",status="200"} 2.0' in metrics
    assert "aggregator_request_seconds_bucket" in metrics


async def test_unknown_path_and_method_get_json_errors() -> None:
    async with running_proxy(settings_from()) as proxy:
        missing, missing_body = await proxy.get("/nope")
        async with proxy.session.put(f"{proxy.url}/profile") as response:
            method_status = response.status
            method_body = await response.text()
    assert missing == 404
    assert '"error"' in missing_body
    assert method_status == 405
    assert '"error"' in method_body


async def test_a_purge_reaches_other_replicas_within_near_ttl(
    crm: FakeCrm, redis_url: str, cache_namespace: str, clock: FakeClock
) -> None:
    settings = settings_from(
        {"crm": crm_connector(crm)},
        cache_url=redis_url,
        cache={"namespace": cache_namespace, "near_ttl": 1.0},
    )
    async with (
        running_proxy(settings, clock=clock) as first,
        running_proxy(settings, clock=clock) as second,
    ):
        await first.profile("ada@example.com")
        _, cached = await second.profile("ada@example.com")
        crm.contacts["ada@example.com"]["seats"] = 77
        params = {"email": "ada@example.com", "api_token": TOKEN}
        async with first.session.post(f"{first.url}/profile/purge", params=params) as response:
            assert response.status == 200
        clock.advance(1.0)
        _, after = await second.profile("ada@example.com")
    assert cached["profile_cached"] is True
    assert cached["crm_seats"] == 12
    assert after["crm_seats"] == 77
    assert after["profile_cached"] is False


async def test_access_log_has_one_masked_line_per_request(
    crm: FakeCrm, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_from({"crm": crm_connector(crm)}, server={"access_log": True})
    with caplog.at_level(logging.INFO, logger="aggregator.request"):
        async with running_proxy(settings) as proxy:
            await proxy.profile("ada@example.com")
            await proxy.profile("ada@example.com")
    lines = [r for r in caplog.records if r.name == "aggregator.request"]
    assert len(lines) == 2
    first, second = lines
    assert first.__dict__["status"] == 200
    assert first.__dict__["cache"] == "miss"
    assert first.__dict__["connectors"] == {"crm": "ok"}
    assert first.__dict__["email"] == "a***@example.com"
    assert second.__dict__["cache"] == "hit"
    assert first.__dict__["request_id"] != second.__dict__["request_id"]
    assert "ada@example.com" not in caplog.text
    assert TOKEN not in caplog.text
