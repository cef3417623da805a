"""The cached-hit fast path keeps every behaviour of the full one: auth after a token
rotation, 400/401 for other query strings, metrics, JSON errors (issue 14)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from aggregator.config import load_settings
from aggregator.keys import SERVICE
from aggregator.reload import RELOADER
from tests.integration.test_reload import write_config
from tests.support.proxy import TOKEN, running_proxy, settings_from
from tests.support.upstreams import FakeCrm

pytestmark = pytest.mark.asyncio


def crm_connector(crm: FakeCrm) -> dict[str, object]:
    return {"type": "rest", "url": crm.template, "select": "data[0]", "timeout": 0.5}


async def test_a_query_accepted_before_a_token_rotation_is_refused_after_it(
    crm: FakeCrm, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, crm)
    async with running_proxy(load_settings(config)) as proxy:
        before, _ = await proxy.profile("ada@example.com")
        again, _ = await proxy.profile("ada@example.com")  # the same bytes: a cached hit
        config.write_text(config.read_text().replace(TOKEN, "rotated-token-0123456789"))
        assert await proxy.app[RELOADER].reload()
        after, body = await proxy.profile("ada@example.com")
    assert (before, again, after) == (200, 200, 401)
    assert "api_token" in body["error"]


async def test_other_query_strings_are_still_checked(crm: FakeCrm) -> None:
    async with running_proxy(settings_from({"crm": crm_connector(crm)})) as proxy:
        first, _ = await proxy.profile("ada@example.com")
        wrong_token, _ = await proxy.profile("ada@example.com", token="wrong-token")
        no_token, _ = await proxy.profile("ada@example.com", token=None)
        bad_email, body = await proxy.profile("ada@example")
        other_case, cached = await proxy.profile("ADA@Example.com")
    assert (first, wrong_token, no_token, bad_email) == (200, 401, 401, 400)
    assert "not a valid address" in body["error"]
    assert other_case == 200
    assert cached["profile_cached"] is True
    assert crm.calls == {"ada@example.com": 1}


async def test_cached_hits_are_counted_like_before(crm: FakeCrm) -> None:
    async with running_proxy(settings_from({"crm": crm_connector(crm)})) as proxy:
        for _ in range(5):
            assert (await proxy.profile("ada@example.com"))[0] == 200
        assert (await proxy.profile("ada@example.com", token="wrong"))[0] == 401
        _, metrics = await proxy.get("/metrics")
    assert 'aggregator_cache_total{result="hit"} 4.0' in metrics
    assert 'aggregator_request_seconds_count{cache="hit"} 4.0' in metrics
    assert 'aggregator_request_seconds_count{cache="miss"} 1.0' in metrics
    assert 'aggregator_requests_total{route="profile",status="200"} 5.0' in metrics
    assert 'aggregator_requests_total{route="profile",status="401"} 1.0' in metrics


async def test_an_error_on_the_profile_route_is_a_logged_json_500(
    crm: FakeCrm, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_proxy(settings_from({"crm": crm_connector(crm)})) as proxy:
        service = proxy.app[SERVICE]

        def broken(email: str) -> bytes | None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(service, "cached_body", broken)
        with caplog.at_level(logging.ERROR, logger="aggregator.http"):
            status, body = await proxy.profile("ada@example.com")
            healthy, _ = await proxy.get("/healthz")
    assert (status, body) == (500, {"error": "internal error"})
    assert healthy == 200
    assert "unhandled error on GET /profile" in caplog.text
    assert "a bug" in caplog.text
