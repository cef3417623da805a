"""Stripe, Postgres and a CRM together behind one proxy, including a database restart."""

from __future__ import annotations

import asyncio
from typing import Any

from aggregator.samples.stripe_api import FakeStripe
from tests.support.fakes import FakeClock
from tests.support.pg import PgSchema, RestartablePostgres, create_schema
from tests.support.proxy import running_proxy, settings_from
from tests.support.upstreams import FakeCrm

QUERY = "SELECT plan, seats, mrr, signed_up_at FROM accounts WHERE lower(email) = $1"


def seed_stripe(fake: FakeStripe) -> None:
    customer = fake.add_customer("ada@example.com", name="Ada")
    fake.add_subscription(customer, [fake.item(4900, nickname="Pro monthly")])
    fake.add_charge(customer, 4900)


def connectors(fake: FakeStripe, dsn: str, crm: FakeCrm, **db: Any) -> dict[str, Any]:
    return {
        "stripe": {"type": "stripe", "api_key": fake.key, "api_base": fake.url},
        "db": {"type": "postgres", "dsn": dsn, "query": QUERY, "retries": 1, **db},
        "crm": {"type": "rest", "url": crm.template, "select": "data[0]"},
    }


async def test_profile_from_three_connector_types(
    fake_stripe: FakeStripe, pg_schema: PgSchema, crm: FakeCrm
) -> None:
    seed_stripe(fake_stripe)
    settings = settings_from(connectors(fake_stripe, pg_schema.dsn, crm))
    async with running_proxy(settings) as proxy:
        status, body = await proxy.profile("ada@example.com")
        _, unknown = await proxy.profile("nobody@example.com")
    assert status == 200
    assert body["profile_complete"] is True
    assert body["stripe_plan"] == "Pro monthly"
    assert body["stripe_mrr"] == "$49.00"
    assert body["stripe_lifetime_value"] == "$49.00"
    assert body["stripe_subscription_status"] == "active"
    assert body["db_plan"] == "Pro"
    assert body["db_seats"] == 12
    assert body["db_mrr"] == 1499.5
    assert body["db_signed_up_at"] == "2021-03-04T05:06:07Z"
    assert body["crm_plan_name"] == "Pro"
    assert set(unknown) == {
        "profile_complete",
        "profile_fetched_at",
        "profile_cached",
        "profile_stale",
    }


async def test_database_restart_mid_run(
    fake_stripe: FakeStripe, restartable_postgres: RestartablePostgres, crm: FakeCrm
) -> None:
    seed_stripe(fake_stripe)
    schema = await create_schema(restartable_postgres.dsn)
    settings = settings_from(
        connectors(fake_stripe, schema.dsn, crm, timeout=0.5, circuit_failures=0),
        cache={"ttl": 60, "stale_ttl": 0},
    )
    clock = FakeClock()
    async with running_proxy(settings, clock=clock) as proxy:
        _, before = await proxy.profile("ada@example.com")
        await restartable_postgres.stop()
        clock.advance(61)
        status, during = await proxy.profile("ada@example.com")
        await restartable_postgres.start()
        after: dict[str, Any] = {}
        for _ in range(50):
            await asyncio.sleep(0.1)  # until PostgreSQL accepts connections again
            clock.advance(61)
            _, after = await proxy.profile("ada@example.com")
            if "db_plan" in after:
                break
    assert before["db_plan"] == "Pro"
    assert status == 200
    assert during["db_error"] in {"unavailable", "timeout", "error"}
    assert "db_plan" not in during
    assert during["stripe_plan"] == "Pro monthly"
    assert during["crm_plan_name"] == "Pro"
    assert after["db_plan"] == "Pro"
    assert "db_error" not in after
