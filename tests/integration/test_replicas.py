"""Several ``aggregator serve`` processes sharing one Redis: one fan-out per email, final purges."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from redis.asyncio import Redis

from aggregator.keys import SERVICE
from tests.support.proxy import TOKEN, running_proxy, settings_from
from tests.support.serve import ServeProcess
from tests.support.upstreams import FakeCrm, start_crm

EMAIL = "cold.customer@example.com"


def write_config(
    path: Path,
    redis_url: str,
    namespace: str,
    crms: dict[str, FakeCrm],
    **cache: float,
) -> Path:
    """A config file for a replica: one token, the shared Redis, a rest connector per CRM."""
    document: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "deadline": 3.0},
        "auth": {"api_tokens": [TOKEN]},
        "cache": {"url": redis_url, "namespace": namespace, **cache},
        "logging": {"level": "WARNING"},
        "connectors": {
            name: {
                "type": "rest",
                "url": crm.template,
                "select": "data[0]",
                "timeout": 2.0,
                "retries": 0,
            }
            for name, crm in crms.items()
        },
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def replicas(config: Path, logs: Path, count: int) -> Iterator[list[ServeProcess]]:
    """``count`` serve processes on the same config, stopped on exit whatever happens."""
    started: list[ServeProcess] = []
    try:
        for index in range(count):
            started.append(ServeProcess(config, logs / f"replica-{index}.log"))
        yield started
    finally:
        for replica in started:
            replica.stop()


@asynccontextmanager
async def counting_crms(*names: str) -> AsyncIterator[dict[str, FakeCrm]]:
    """A slow (~200 ms) fake CRM per name that knows EMAIL and counts calls."""
    crms = {
        name: FakeCrm(contacts={EMAIL: {"plan": name.title()}}, default_delay=0.2) for name in names
    }
    runners = [await start_crm(crm) for crm in crms.values()]
    try:
        yield crms
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_two_serve_processes_share_one_fan_out_per_email(
    tmp_path: Path, redis_url: str, cache_namespace: str
) -> None:
    async with counting_crms("crm", "billing") as crms, aiohttp.ClientSession() as session:
        config = write_config(tmp_path / "config.yaml", redis_url, cache_namespace, crms)
        with replicas(config, tmp_path, 2) as (first, second):
            await first.wait_ready(session)
            await second.wait_ready(session)

            async def ask(replica: ServeProcess) -> tuple[int, dict[str, Any]]:
                params = {"email": EMAIL, "api_token": TOKEN}
                async with session.get(f"{replica.url}/profile", params=params) as response:
                    return response.status, await response.json(content_type=None)

            answers = await asyncio.gather(*(ask(first if i % 2 else second) for i in range(200)))
            outputs = first.output() + second.output()

    assert [status for status, _ in answers] == [200] * 200, outputs
    assert all(body.get("crm_plan") == "Crm" for _, body in answers), answers[:3]
    assert all(body.get("billing_plan") == "Billing" for _, body in answers), answers[:3]
    assert crms["crm"].calls == {EMAIL: 1}
    assert crms["billing"].calls == {EMAIL: 1}


async def test_a_lock_left_by_a_dead_replica_does_not_cost_the_answer_its_fields(
    redis_url: str, cache_namespace: str
) -> None:
    # A replica that died (or lost Redis) between taking the fetch lock and releasing it
    # leaves the lock until it expires; the replicas still up must answer with the fields.
    async with counting_crms("crm") as crms:
        crm = crms["crm"]
        crm.default_delay = 0
        connector = {"type": "rest", "url": crm.template, "select": "data[0]"}
        settings = settings_from(
            {"crm": connector}, cache_url=redis_url, cache={"namespace": cache_namespace}
        )
        async with running_proxy(settings) as proxy:
            lock_key = proxy.app[SERVICE].store.keys.lock(EMAIL)
            client = Redis.from_url(redis_url)
            try:
                await client.set(lock_key, "token-of-a-dead-replica", px=30_000)
                status, body = await proxy.profile(EMAIL)
            finally:
                await client.delete(lock_key)
                await client.aclose()

    assert status == 200
    assert body.get("crm_plan") == "Crm", body
    assert crm.calls == {EMAIL: 1}


async def test_a_purge_is_final_on_every_replica_even_when_the_upstream_then_fails(
    tmp_path: Path, redis_url: str, cache_namespace: str
) -> None:
    # Two replicas hold a near copy of two profiles; one replica purges both and the CRM
    # starts failing. Once near_ttl has passed, the other replica must not show the purged
    # fields: not as its near copy while that is still fresh, and not as a stale fallback
    # once it has expired (only the CRM's error is left to show).
    fresh_email, expired_email = "fresh.copy@example.com", "expired.copy@example.com"
    ttl, near_ttl = 2.0, 0.3
    crm = FakeCrm(contacts={e: {"plan": "Purged"} for e in (fresh_email, expired_email)})
    runner = await start_crm(crm)
    try:
        async with aiohttp.ClientSession() as session:
            config = write_config(
                tmp_path / "config.yaml",
                redis_url,
                cache_namespace,
                {"crm": crm},
                ttl=ttl,
                near_ttl=near_ttl,
            )
            with replicas(config, tmp_path, 2) as (first, second):
                await first.wait_ready(session)
                await second.wait_ready(session)

                async def ask(replica: ServeProcess, email: str) -> dict[str, Any]:
                    params = {"email": email, "api_token": TOKEN}
                    async with session.get(f"{replica.url}/profile", params=params) as response:
                        assert response.status == 200
                        body: dict[str, Any] = await response.json(content_type=None)
                        return body

                async def purge(replica: ServeProcess, email: str) -> None:
                    params = {"email": email, "api_token": TOKEN}
                    url = f"{replica.url}/profile/purge"
                    async with session.post(url, params=params) as response:
                        assert response.status == 200, await response.text()

                loop = asyncio.get_running_loop()
                for email in (fresh_email, expired_email):
                    assert (await ask(first, email))["crm_plan"] == "Purged"
                    cached = await ask(second, email)
                    assert cached["crm_plan"] == "Purged"
                    assert cached["profile_cached"] is True
                fetched = loop.time()
                crm.fail_with = 500
                for email in (fresh_email, expired_email):
                    await purge(first, email)

                await asyncio.sleep(near_ttl + 0.2)
                while_fresh = await ask(second, fresh_email)
                assert loop.time() - fetched < ttl, "too slow to see the copy while fresh"
                await asyncio.sleep(max(0.0, fetched + ttl + 0.2 - loop.time()))
                once_expired = await ask(second, expired_email)
                outputs = first.output() + second.output()
    finally:
        await runner.cleanup()

    for body in (while_fresh, once_expired):
        assert "crm_plan" not in body, (body, outputs)
        assert body["crm_error"] == "error", body
        assert body["profile_stale"] is False, body
        assert body["profile_cached"] is False, body
