"""The postgres connector against a real PostgreSQL: types, queries, failures, restarts, check."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest

from aggregator.errors import FatalError, UnavailableError
from aggregator.merge import flatten
from connectors.postgres import PostgresConnector, PostgresSettings
from tests.support.pg import (
    PgSchema,
    RestartablePostgres,
    create_schema,
    drop_schema,
    with_server_settings,
)

ACCOUNT_SQL = (
    "SELECT plan, seats, mrr, signed_up_at, id, tags, meta FROM accounts WHERE lower(email) = $1"
)
INVOICES_SQL = "SELECT amount, issued_on FROM invoices WHERE email = $1 ORDER BY issued_on"

Factory = Callable[..., PostgresConnector]


@pytest.fixture
async def make_connector() -> AsyncIterator[Factory]:
    """Build connectors from config keys; every one is closed after the test."""
    made: list[PostgresConnector] = []

    def make(**config: Any) -> PostgresConnector:
        settings = PostgresSettings.model_validate({"type": "postgres", **config})
        connector = PostgresConnector("db", settings)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        await connector.close()


async def test_single_query_maps_every_type(
    pg_schema: PgSchema, make_connector: Factory, session: aiohttp.ClientSession
) -> None:
    connector = make_connector(dsn=pg_schema.dsn, query=ACCOUNT_SQL)
    await connector.open(session)

    outcome = await connector.fetch("ada@example.com")

    assert outcome.status == "ok"
    assert outcome.fields == {
        "plan": "Pro",
        "seats": 12,
        "mrr": Decimal("1499.50"),
        "signed_up_at": dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.UTC),
        "id": uuid.UUID("6f1c2a3b-0d4e-4f5a-9b6c-7d8e9f0a1b2c"),
        "tags": ["vip", "beta"],
        "meta": {"tier": {"level": 2, "name": "gold"}, "flags": ["a", "b"], "active": True},
    }
    assert flatten(outcome.fields) == {
        "plan": "Pro",
        "seats": 12,
        "mrr": 1499.5,
        "signed_up_at": "2021-03-04T05:06:07Z",
        "id": "6f1c2a3b-0d4e-4f5a-9b6c-7d8e9f0a1b2c",
        "tags": "vip, beta",
        "meta_tier_level": 2,
        "meta_tier_name": "gold",
        "meta_flags": "a, b",
        "meta_active": True,
    }


async def test_nulls_become_none(pg_schema: PgSchema, make_connector: Factory) -> None:
    connector = make_connector(dsn=pg_schema.dsn, query=ACCOUNT_SQL)

    outcome = await connector.fetch("bob@example.com")

    assert outcome.status == "ok"
    assert outcome.fields == {
        "plan": "Free",
        "seats": None,
        "mrr": None,
        "signed_up_at": None,
        "id": None,
        "tags": None,
        "meta": None,
    }


async def test_named_queries_with_many(pg_schema: PgSchema, make_connector: Factory) -> None:
    connector = make_connector(
        dsn=pg_schema.dsn,
        queries={
            "account": "SELECT plan FROM accounts WHERE email = $1",
            "invoices": {"sql": INVOICES_SQL, "many": True},
        },
    )

    ada = await connector.fetch("ada@example.com")
    carol = await connector.fetch("carol@example.com")

    assert ada.status == "ok"
    assert ada.fields == {
        "account": {"plan": "Pro"},
        "invoices": [
            {"amount": Decimal("100.00"), "issued_on": dt.date(2024, 1, 31)},
            {"amount": Decimal("250.25"), "issued_on": dt.date(2024, 2, 29)},
        ],
    }
    assert flatten(ada.fields) == {
        "account_plan": "Pro",
        "invoices_0_amount": 100,
        "invoices_0_issued_on": "2024-01-31",
        "invoices_1_amount": 250.25,
        "invoices_1_issued_on": "2024-02-29",
        "invoices_count": 2,
    }
    # Known to one query only: the other adds nothing (or an empty list).
    assert carol.status == "ok"
    assert carol.fields == {
        "invoices": [{"amount": Decimal("9.99"), "issued_on": dt.date(2024, 3, 1)}]
    }


async def test_unknown_email_is_not_found(pg_schema: PgSchema, make_connector: Factory) -> None:
    single = make_connector(dsn=pg_schema.dsn, query=ACCOUNT_SQL)
    several = make_connector(
        dsn=pg_schema.dsn,
        queries={"account": ACCOUNT_SQL, "invoices": {"sql": INVOICES_SQL, "many": True}},
    )

    assert (await single.fetch("nobody@example.com")).status == "not_found"
    assert (await several.fetch("nobody@example.com")).status == "not_found"


@pytest.mark.parametrize(
    "email",
    ["nobody@example.com' OR 'a'='a", "x@x.com'; DROP TABLE accounts; --"],
)
async def test_email_is_a_bind_parameter(
    pg_schema: PgSchema, make_connector: Factory, email: str
) -> None:
    connector = make_connector(
        dsn=pg_schema.dsn, query="SELECT plan FROM accounts WHERE email = $1"
    )

    outcome = await connector.fetch(email)

    assert outcome.status == "not_found"
    assert await pg_schema.fetchval("SELECT count(*) FROM accounts") == 2


async def test_statement_timeout_cancels_and_pool_stays_usable(
    pg_schema: PgSchema, make_connector: Factory
) -> None:
    sql = (
        "SELECT plan FROM accounts, pg_sleep(CASE WHEN $1 = 'slow@example.com' THEN 5 ELSE 0 END)"
        " WHERE email = $1 OR $1 = 'slow@example.com' LIMIT 1"
    )
    connector = make_connector(
        dsn=pg_schema.dsn, query=sql, timeout=3.0, statement_timeout=0.2, min_size=1, max_size=1
    )

    slow = await connector.fetch("slow@example.com")
    after = await connector.fetch("ada@example.com")

    assert slow.status == "error"
    assert after.status == "ok"
    assert after.fields == {"plan": "Pro"}


async def test_client_timeout_and_pool_stays_usable(
    pg_schema: PgSchema, make_connector: Factory
) -> None:
    sql = (
        "SELECT plan FROM accounts, pg_sleep(CASE WHEN $1 = 'slow@example.com' THEN 5 ELSE 0 END)"
        " WHERE email = $1 OR $1 = 'slow@example.com' LIMIT 1"
    )
    connector = make_connector(
        dsn=pg_schema.dsn, query=sql, timeout=0.3, statement_timeout=30, min_size=1, max_size=1
    )

    slow = await connector.fetch("slow@example.com")
    after = await connector.fetch("ada@example.com")

    assert slow.status == "timeout"
    assert after.status == "ok"
    assert after.fields == {"plan": "Pro"}


async def test_dropped_connection_is_retried_on_a_fresh_one(
    pg_schema: PgSchema, make_connector: Factory
) -> None:
    app = f"agg_{pg_schema.name}"
    connector = make_connector(
        dsn=with_server_settings(pg_schema.dsn, application_name=app),
        query="SELECT plan FROM accounts, pg_sleep(0.5) WHERE email = $1",
        timeout=5.0,
    )
    killed: list[bool] = []

    async def kill_first_query() -> None:
        conn = await asyncpg.connect(pg_schema.base_dsn)
        try:
            while True:
                pid = await conn.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE state = 'active'"
                    " AND application_name = $1 AND query LIKE '%pg_sleep%'",
                    app,
                )
                if pid is not None:
                    killed.append(await conn.fetchval("SELECT pg_terminate_backend($1)", pid))
                    return
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    killer = asyncio.create_task(kill_first_query())
    outcome = await connector.fetch("ada@example.com")
    await killer

    assert killed == [True]
    assert outcome.status == "ok"
    assert outcome.fields == {"plan": "Pro"}
    assert outcome.attempts == 2


async def test_concurrent_first_fetches_share_one_pool(
    pg_schema: PgSchema, make_connector: Factory
) -> None:
    app = f"agg_{pg_schema.name}"
    connector = make_connector(
        dsn=with_server_settings(pg_schema.dsn, application_name=app),
        query="SELECT plan FROM accounts WHERE email = $1",
        min_size=2,
        max_size=2,
    )

    outcomes = await asyncio.gather(*(connector.fetch("ada@example.com") for _ in range(20)))
    backends = await pg_schema.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app
    )

    assert {o.status for o in outcomes} == {"ok"}
    assert backends == 2


async def test_sessions_are_read_only(pg_schema: PgSchema, make_connector: Factory) -> None:
    connector = make_connector(
        dsn=pg_schema.dsn,
        query=(
            "WITH gone AS (DELETE FROM accounts WHERE email = $1 RETURNING plan) SELECT * FROM gone"
        ),
    )

    outcome = await connector.fetch("ada@example.com")

    assert outcome.status == "error"
    assert await pg_schema.fetchval("SELECT count(*) FROM accounts") == 2


async def test_database_down_at_open_then_back(
    restartable_postgres: RestartablePostgres,
    make_connector: Factory,
    session: aiohttp.ClientSession,
) -> None:
    schema = await create_schema(restartable_postgres.dsn)
    try:
        connector = make_connector(dsn=schema.dsn, query=ACCOUNT_SQL, circuit_failures=0)
        await restartable_postgres.stop()

        await connector.open(session)  # must not raise: the proxy starts without its database
        down = await connector.fetch("ada@example.com")
        await restartable_postgres.start()
        up = await connector.fetch("ada@example.com")
    finally:
        if not restartable_postgres.running:
            await restartable_postgres.start()
        await drop_schema(schema)

    assert down.status == "unavailable"
    assert up.status == "ok"
    assert up.fields is not None and up.fields["plan"] == "Pro"


async def test_pool_survives_a_restart(
    restartable_postgres: RestartablePostgres,
    make_connector: Factory,
    session: aiohttp.ClientSession,
) -> None:
    schema = await create_schema(restartable_postgres.dsn)
    try:
        connector = make_connector(
            dsn=schema.dsn,
            queries={"account": ACCOUNT_SQL, "invoices": {"sql": INVOICES_SQL, "many": True}},
            min_size=2,
            max_size=4,
            circuit_failures=0,
        )
        await connector.open(session)
        before = await connector.fetch("ada@example.com")
        await restartable_postgres.stop()
        during = await connector.fetch("ada@example.com")
        await restartable_postgres.start()
        after = await connector.fetch("ada@example.com")
        again = await connector.fetch("ada@example.com")
    finally:
        if not restartable_postgres.running:
            await restartable_postgres.start()
        await drop_schema(schema)

    assert before.status == "ok"
    assert during.status == "unavailable"
    assert after.status == "ok"
    assert after.fields == before.fields
    assert again.status == "ok"


async def test_check_passes_on_good_sql(
    pg_schema: PgSchema, make_connector: Factory, session: aiohttp.ClientSession
) -> None:
    unopened = make_connector(dsn=pg_schema.dsn, query=ACCOUNT_SQL)
    opened = make_connector(
        dsn=pg_schema.dsn,
        queries={"account": ACCOUNT_SQL, "invoices": {"sql": INVOICES_SQL, "many": True}},
    )
    await opened.open(session)

    await unopened.check()
    await opened.check()


async def test_check_names_each_broken_query(
    pg_schema: PgSchema, make_connector: Factory, session: aiohttp.ClientSession
) -> None:
    connector = make_connector(
        dsn=pg_schema.dsn,
        queries={
            "account": ACCOUNT_SQL,
            "invoices": {"sql": "SELECT amount FROM invoicez WHERE email = $1", "many": True},
            "broken": "SELEC plan FROM accounts WHERE email = $1",
            "column": "SELECT nope FROM accounts WHERE email = $1",
            "noparam": "SELECT plan FROM accounts",
        },
    )
    await connector.open(session)

    with pytest.raises(FatalError) as raised:
        await connector.check()

    message = str(raised.value)
    assert "query 'invoices': relation \"invoicez\" does not exist" in message
    assert "query 'broken': syntax error at or near \"SELEC\"" in message
    assert "query 'column': column \"nope\" does not exist" in message
    assert "query 'noparam': takes 0 parameters" in message
    assert "'account'" not in message


async def test_check_single_query_syntax_error(
    pg_schema: PgSchema, make_connector: Factory
) -> None:
    connector = make_connector(dsn=pg_schema.dsn, query="SELECT plan FRM accounts WHERE email = $1")

    with pytest.raises(FatalError, match=r"^query: syntax error"):
        await connector.check()


async def test_dsn_password_never_leaks(
    postgres_dsn: str,
    make_connector: Factory,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    unused_tcp_port: int,
) -> None:
    password = "s3cr3t-Pa55word"
    refused = make_connector(
        dsn=f"postgresql://postgres:{password}@127.0.0.1:{unused_tcp_port}/x", query=ACCOUNT_SQL
    )
    no_role = make_connector(
        dsn=_with_credentials(postgres_dsn, "no_such_role_x", password), query=ACCOUNT_SQL
    )
    caplog.set_level(logging.DEBUG)

    await refused.open(session)
    outcomes = [await refused.fetch("ada@example.com"), await no_role.fetch("ada@example.com")]
    errors: list[BaseException] = []
    for connector in (refused, no_role):
        with pytest.raises((UnavailableError, FatalError)) as raised:
            await connector.check()
        errors.append(raised.value)

    assert [o.status for o in outcomes] == ["unavailable", "error"]
    assert isinstance(errors[0], UnavailableError)
    assert isinstance(errors[1], FatalError)
    assert "no_such_role_x" in str(errors[1])
    texts = [o.detail for o in outcomes] + [str(e) for e in errors] + [caplog.text]
    assert all(password not in text for text in texts)


def _with_credentials(dsn: str, user: str, password: str) -> str:
    scheme, rest = dsn.split("://", 1)
    rest = rest.split("@", 1)[1] if "@" in rest.split("/", 1)[0] else rest
    return f"{scheme}://{user}:{password}@{rest}"


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"query": "SELECT 1", "queries": {"a": "SELECT 1"}},
        {"queries": {}},
        {"query": "SELECT 1", "min_size": 5, "max_size": 2},
        {"queries": {"a": {"sql": "SELECT 1", "many": True, "extra": 1}}},
    ],
)
def test_settings_refuse_bad_shapes(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PostgresSettings.model_validate({"type": "postgres", "dsn": "postgresql://x/y", **config})


def test_settings_defaults() -> None:
    settings = PostgresSettings.model_validate(
        {"type": "postgres", "dsn": "postgresql://x/y", "query": "SELECT 1"}
    )

    assert settings.timeout == 1.0
    assert (settings.min_size, settings.max_size, settings.statement_timeout) == (1, 10, None)
    assert "postgresql://x/y" not in repr(settings)


async def test_formats_show_money_and_dates_like_stripe(
    pg_schema: PgSchema, make_connector: Factory
) -> None:
    connector = make_connector(
        dsn=pg_schema.dsn,
        queries={"account": ACCOUNT_SQL, "invoices": {"sql": INVOICES_SQL, "many": True}},
        formats={"mrr": "money:eur", "signed_up_at": "date", "amount": "money:usd"},
    )

    outcome = await connector.fetch("ada@example.com")

    assert outcome.status == "ok"
    assert outcome.fields is not None
    fields = flatten(outcome.fields)
    assert fields["account_mrr"] == "€1499.50"
    assert fields["account_signed_up_at"] == "2021-03-04"
    assert fields["account_plan"] == "Pro"
    amounts = [v for k, v in fields.items() if k.startswith("invoices_") and k.endswith("_amount")]
    assert amounts and all(isinstance(a, str) and a.startswith("$") for a in amounts)
