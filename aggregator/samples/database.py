"""Sample SQL data for the demo, and a PostgreSQL to hold it.

``open_sample_database()`` uses ``DATABASE_URL`` when set, else the local server at
``postgresql://postgres@127.0.0.1:5432/postgres`` when it answers, else an embedded
PostgreSQL from ``pgserver`` in a temporary directory. It seeds the schema
``aggregator_demo`` (created if missing, rows upserted, nothing else touched) and leaves it
in place on close; an embedded server is stopped and its directory removed.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

log = logging.getLogger("aggregator.demo")

SCHEMA = "aggregator_demo"
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
_SEED_LOCK = 0x61676764656D6F  # pg_advisory_xact_lock key: concurrent demos seed one at a time

SEED_SQL = """
CREATE SCHEMA IF NOT EXISTS aggregator_demo;
CREATE TABLE IF NOT EXISTS aggregator_demo.accounts (
    email         text PRIMARY KEY,
    company       text,
    plan          text NOT NULL,
    seats         integer NOT NULL DEFAULT 1,
    mrr           numeric(12, 2) NOT NULL DEFAULT 0,
    signed_up_at  timestamptz NOT NULL,
    trial_ends_at timestamptz,
    last_seen_at  timestamptz,
    features      text[] NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS aggregator_demo.invoices (
    number    text PRIMARY KEY,
    email     text NOT NULL,
    amount    numeric(12, 2) NOT NULL,
    status    text NOT NULL,
    issued_on date NOT NULL
);
INSERT INTO aggregator_demo.accounts AS a
    (email, company, plan, seats, mrr, signed_up_at, trial_ends_at, last_seen_at, features)
VALUES
    ('ada@example.com', 'Analytical Engines Ltd', 'Pro', 12, 1499.50,
     '2021-03-04 09:15:00+00', NULL, '2024-06-01 08:30:00+00', '{api,sso}'),
    ('grace@example.com', 'Compiler Works Inc', 'Enterprise', 250, 12500.00,
     '2019-12-09 14:00:00+00', NULL, '2024-06-02 16:45:00+00', '{api,sso,audit_log}'),
    ('alan@example.com', 'Bletchley Computing', 'Starter', 3, 29.00,
     '2023-08-25 20:57:00+00', '2023-09-08 20:57:00+00', '2024-05-28 11:10:00+00', '{}')
ON CONFLICT (email) DO UPDATE SET
    company = EXCLUDED.company, plan = EXCLUDED.plan, seats = EXCLUDED.seats,
    mrr = EXCLUDED.mrr, signed_up_at = EXCLUDED.signed_up_at,
    trial_ends_at = EXCLUDED.trial_ends_at, last_seen_at = EXCLUDED.last_seen_at,
    features = EXCLUDED.features;
INSERT INTO aggregator_demo.invoices (number, email, amount, status, issued_on) VALUES
    ('INV-1001', 'ada@example.com', 1499.50, 'paid', '2024-04-01'),
    ('INV-1042', 'ada@example.com', 1499.50, 'paid', '2024-05-01'),
    ('INV-1088', 'ada@example.com', 1499.50, 'open', '2024-06-01'),
    ('INV-2001', 'grace@example.com', 12500.00, 'paid', '2024-05-01'),
    ('INV-2002', 'grace@example.com', 12500.00, 'paid', '2024-06-01'),
    ('INV-3001', 'alan@example.com', 29.00, 'uncollectible', '2024-06-01')
ON CONFLICT (number) DO UPDATE SET
    email = EXCLUDED.email, amount = EXCLUDED.amount, status = EXCLUDED.status,
    issued_on = EXCLUDED.issued_on;
"""

# The demo's postgres connector: one row of the account, every invoice (latest first).
QUERIES: dict[str, Any] = {
    "account": (
        "SELECT company, plan, seats, '$' || to_char(mrr, 'FM999,999,990.00') AS mrr, "
        "signed_up_at, trial_ends_at, last_seen_at, features "
        "FROM aggregator_demo.accounts WHERE lower(email) = $1"
    ),
    "invoices": {
        "sql": (
            "SELECT number, '$' || to_char(amount, 'FM999,999,990.00') AS amount, status, "
            "issued_on FROM aggregator_demo.invoices WHERE lower(email) = $1 "
            "ORDER BY issued_on DESC"
        ),
        "many": True,
    },
}


@dataclass
class SampleDatabase:
    """A seeded PostgreSQL: its DSN, where it came from, and what to stop on close."""

    dsn: str
    origin: str
    _server: Any = None
    _tempdir: Path | None = field(default=None, repr=False)

    async def close(self) -> None:
        """Stop an embedded server and remove its directory; a shared server is left alone."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.cleanup)
        tempdir, self._tempdir = self._tempdir, None
        if tempdir is not None:
            await asyncio.to_thread(shutil.rmtree, tempdir, True)


async def seed(dsn: str) -> None:
    """Create and fill the ``aggregator_demo`` schema (idempotent)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SEED_LOCK)
            await conn.execute(SEED_SQL)
    finally:
        await conn.close()


async def answers(dsn: str) -> bool:
    """True when a PostgreSQL accepts a connection at ``dsn`` within two seconds."""
    try:
        conn = await asyncpg.connect(dsn, timeout=2.0)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
    await conn.close()
    return True


def _where(dsn: str) -> str:
    parts = urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def _start_embedded(root: Path) -> Any:
    root.chmod(0o755)  # as root, the server's own user must reach its data directory
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset; its fallback is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pgserver: Any = importlib.import_module("pgserver")
    # As root, pgserver runs PostgreSQL as a system user "pgserver" it creates.
    return pgserver.get_server(root / "pgdata", cleanup_mode="delete")


async def open_sample_database(
    env: Mapping[str, str] | None = None, local_dsn: str = LOCAL_DSN
) -> SampleDatabase:
    """A seeded PostgreSQL for the demo (see the module docstring for which one)."""
    environ = os.environ if env is None else env
    url = environ.get("DATABASE_URL")
    if url:
        database = SampleDatabase(url, "DATABASE_URL")
    elif await answers(local_dsn):
        database = SampleDatabase(local_dsn, f"PostgreSQL at {_where(local_dsn)}")
    else:
        root = Path(tempfile.mkdtemp(prefix="aggregator-demo-pg-"))
        try:
            server = await asyncio.to_thread(_start_embedded, root)
            dsn = await asyncio.to_thread(server.get_uri)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        database = SampleDatabase(dsn, "embedded PostgreSQL (pgserver)", server, root)
    try:
        await seed(database.dsn)
    except BaseException:
        await database.close()
        raise
    return database
