"""Sample SQL data for the demo, and a PostgreSQL to hold it.

``open_sample_database()`` uses ``DATABASE_URL`` when set, else the local server at
``postgresql://postgres@127.0.0.1:5432/postgres`` when it answers, else an embedded
PostgreSQL from ``pgserver`` in a temporary directory. It runs ``seed.sql`` (the same file
the compose stack's PostgreSQL runs) in the schema ``aggregator_demo`` (created if missing,
rows upserted, nothing else touched) and leaves it in place on close; an embedded server is
stopped and its directory removed.
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
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

log = logging.getLogger("aggregator.demo")

SCHEMA = "aggregator_demo"
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
_SEED_LOCK = 0x61676764656D6F  # pg_advisory_xact_lock key: concurrent demos seed one at a time

SEED_FILE = "seed.sql"  # package data beside this module, also mounted by docker-compose.yml

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


def seed_sql() -> str:
    """The sample tables and rows: ``seed.sql``, with no schema names in it."""
    return resources.files("aggregator.samples").joinpath(SEED_FILE).read_text(encoding="utf-8")


async def seed(dsn: str) -> None:
    """Create and fill the ``aggregator_demo`` schema (idempotent)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SEED_LOCK)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            await conn.execute(f"SET LOCAL search_path TO {SCHEMA}")
            await conn.execute(seed_sql())
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
