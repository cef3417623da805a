"""Optional IP allow-list and per-client rate limit in front of the profile endpoint."""

from __future__ import annotations

import asyncio

from tests.support.proxy import running_proxy, settings_from


async def test_allow_list_refuses_other_addresses_but_not_probes() -> None:
    settings = settings_from(server={"allow_ips": ["203.0.113.0/24"]})
    async with running_proxy(settings) as proxy:
        status, body = await proxy.profile("ada@example.com")
        health, _ = await proxy.get("/healthz")
    assert status == 403
    assert "not allowed" in body["error"]
    assert health == 200


async def test_allow_list_admits_listed_networks() -> None:
    settings = settings_from(server={"allow_ips": ["203.0.113.0/24", "127.0.0.0/8"]})
    async with running_proxy(settings) as proxy:
        status, _ = await proxy.profile("ada@example.com")
    assert status == 200


async def test_client_rate_limit_answers_429_beyond_the_burst() -> None:
    settings = settings_from(server={"client_rate_limit": 1, "client_burst": 5})
    async with running_proxy(settings) as proxy:
        answers = await asyncio.gather(*(proxy.profile("ada@example.com") for _ in range(12)))
    statuses = sorted(status for status, _ in answers)
    assert statuses.count(200) == 5
    assert statuses.count(429) == 7
    assert all("too many" in body["error"] for status, body in answers if status == 429)
