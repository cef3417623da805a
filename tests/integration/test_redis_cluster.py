"""The proxy on a real three-node Redis Cluster (``cache.url: redis+cluster://...``).

Two proxies share the cluster as two replicas behind a load balancer would, so what one
caches or locks must be seen by the other through the cluster, not an in-process copy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import orjson
import pytest
from redis.asyncio import RedisCluster

from aggregator.config import Settings
from aggregator.runtime import build_store
from tests.support.net import free_port
from tests.support.proxy import TOKEN, Proxy, running_proxy, settings_from
from tests.support.redis_cluster import RedisClusterProcesses
from tests.support.upstreams import FakeCrm

pytestmark = pytest.mark.asyncio


def cluster_settings(crm: FakeCrm, url: str, **cache: Any) -> Settings:
    """A CRM connector, the cluster as cache, a namespace no other test uses."""
    connector = {"type": "rest", "url": crm.template, "select": "data[0]", "timeout": 2.0}
    return settings_from(
        {"crm": connector},
        cache_url=url,
        cache={"namespace": f"cluster-{uuid.uuid4().hex[:10]}", "timeout": 1.0, **cache},
        server={"deadline": 3.0},
    )


async def replicas(settings: Settings, count: int, stack: AsyncExitStack) -> list[Proxy]:
    """``count`` proxies with the same settings, closed with ``stack``."""
    return [await stack.enter_async_context(running_proxy(settings)) for _ in range(count)]


@pytest.fixture
async def cluster_client(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    """A cluster client to look at what the proxy stored."""
    client = RedisCluster.from_url(redis_cluster_url.replace("redis+cluster", "redis", 1))
    yield client
    await client.aclose()


async def test_profile_cached_by_one_replica_is_served_by_another(
    crm: FakeCrm, redis_cluster_url: str, cluster_client: RedisCluster
) -> None:
    settings = cluster_settings(crm, redis_cluster_url)
    async with AsyncExitStack() as stack:
        first, second = await replicas(settings, 2, stack)
        status, fetched = await first.profile("ada@example.com")
        again_status, cached = await second.profile("Ada@Example.com")
    assert (status, again_status) == (200, 200)
    assert fetched["profile_cached"] is False
    assert cached["profile_cached"] is True
    assert cached["crm_plan_name"] == "Pro"
    assert cached["profile_fetched_at"] == fetched["profile_fetched_at"]
    assert crm.calls["ada@example.com"] == 1
    store = build_store(settings)
    assert await cluster_client.exists(store.keys.profile("ada@example.com")) == 1
    assert await cluster_client.exists(store.keys.lock("ada@example.com")) == 0, "lock left behind"


async def test_single_flight_across_replicas_through_the_cluster(
    crm: FakeCrm, redis_cluster_url: str
) -> None:
    crm.delay["ada@example.com"] = 0.3
    settings = cluster_settings(crm, redis_cluster_url)
    async with AsyncExitStack() as stack:
        proxies = await replicas(settings, 2, stack)
        answers = await asyncio.gather(
            *(proxies[i % 2].profile("ada@example.com") for i in range(200))
        )
    assert crm.calls["ada@example.com"] == 1
    assert all(status == 200 for status, _ in answers)
    assert all(body["crm_plan_name"] == "Pro" for _, body in answers)
    assert all(body["profile_complete"] is True for _, body in answers)


async def test_purge_drops_the_profile_for_every_replica(
    crm: FakeCrm, redis_cluster_url: str
) -> None:
    settings = cluster_settings(crm, redis_cluster_url, near_ttl=0)
    async with AsyncExitStack() as stack:
        first, second = await replicas(settings, 2, stack)
        await first.profile("ada@example.com")
        crm.contacts["ada@example.com"]["plan"] = {"name": "Enterprise"}
        _, before = await second.profile("ada@example.com")
        params = {"email": "ada@example.com", "api_token": TOKEN}
        async with first.session.post(f"{first.url}/profile/purge", params=params) as response:
            purge_status = response.status
        _, after = await second.profile("ada@example.com")
    assert purge_status == 200
    assert before["crm_plan_name"] == "Pro"
    assert before["profile_cached"] is True
    assert after["crm_plan_name"] == "Enterprise"
    assert after["profile_cached"] is False
    assert after["profile_complete"] is True
    assert crm.calls["ada@example.com"] == 2


async def test_a_purge_announcement_reaches_the_other_replica_through_the_cluster(
    crm: FakeCrm, redis_cluster_url: str
) -> None:
    # near_ttl is long: only the announcement can make the other replica drop its copy.
    settings = cluster_settings(crm, redis_cluster_url, near_ttl=300)
    async with AsyncExitStack() as stack:
        first, second = await replicas(settings, 2, stack)
        await first.profile("ada@example.com")
        await second.profile("ada@example.com")
        crm.contacts["ada@example.com"]["plan"] = {"name": "Enterprise"}
        params = {"email": "ada@example.com", "api_token": TOKEN}
        async with first.session.post(f"{first.url}/profile/purge", params=params) as response:
            assert response.status == 200
        seen = []
        for _ in range(100):
            _, body = await second.profile("ada@example.com")
            seen.append(body["crm_plan_name"])
            if seen[-1] == "Enterprise":
                break
            await asyncio.sleep(0.02)
    assert seen[-1] == "Enterprise", seen


async def test_readyz_reports_the_cluster_usable(crm: FakeCrm, redis_cluster_url: str) -> None:
    async with running_proxy(cluster_settings(crm, redis_cluster_url)) as proxy:
        status, text = await proxy.get("/readyz")
    assert status == 200, text
    assert "redis ok" in text


async def test_profiles_are_spread_over_the_nodes(
    crm: FakeCrm, redis_cluster: RedisClusterProcesses
) -> None:
    settings = cluster_settings(crm, redis_cluster.url)
    emails = [f"customer{i}@example.com" for i in range(30)]
    async with running_proxy(settings) as proxy:
        answers = await asyncio.gather(*(proxy.profile(email) for email in emails))
    assert all(status == 200 for status, _ in answers)
    namespace = build_store(settings).namespace
    per_node = []
    for client in redis_cluster.clients():
        with client:
            per_node.append(sum(1 for _ in client.scan_iter(match=f"{namespace}:profile:*")))
    assert sum(per_node) == len(emails)
    assert sum(1 for count in per_node if count) >= 2, per_node


async def test_answer_is_stored_under_a_hashed_key(
    crm: FakeCrm, redis_cluster_url: str, cluster_client: RedisCluster
) -> None:
    settings = cluster_settings(crm, redis_cluster_url)
    async with running_proxy(settings) as proxy:
        await proxy.profile("bob@example.com")
    raw = await cluster_client.get(build_store(settings).keys.profile("bob@example.com"))
    assert isinstance(raw, bytes)
    body = orjson.loads(raw.partition(b"\n")[2])
    assert body["crm_plan_name"] == "Free"
    assert b"bob@example.com" not in raw


async def test_unreachable_cluster_answers_uncached_and_ready_says_degraded(
    crm: FakeCrm,
) -> None:
    nobody = f"redis+cluster://127.0.0.1:{free_port()}/0"
    async with running_proxy(cluster_settings(crm, nobody)) as proxy:
        answers = await asyncio.gather(*(proxy.profile("ada@example.com") for _ in range(5)))
        ready, text = await proxy.get("/readyz")
    assert all(status == 200 for status, _ in answers)
    assert all(body["crm_plan_name"] == "Pro" for _, body in answers)
    assert all(body["profile_cached"] is False for _, body in answers)
    assert ready == 200, text
    assert orjson.loads(text)["cache"]["degraded"] is True
