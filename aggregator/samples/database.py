"""Sample SQL data for the demo, in a PostgreSQL database of its own, removed on close.

``open_sample_database(server_dsn)`` picks a server: ``server_dsn`` when given
(``aggregator demo --database-url``), else the local one at
``postgresql://postgres@127.0.0.1:5432/postgres`` when it answers, else an embedded PostgreSQL
from ``pgserver`` in a temporary directory. On that server it creates a throwaway database
``aggregator_demo_<random>`` and runs ``seed.sql`` (the same file the compose stack's
PostgreSQL runs) in it. When the role may not create databases, a throwaway schema of that
name in the given database takes its place (the DSN handed out sets its ``search_path``).
``close()`` drops what was created (the database, or the schema) and nothing else; an embedded
server is stopped and its directory removed. $DATABASE_URL is never read.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

log = logging.getLogger("aggregator.demo")

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
NAME_PREFIX = "aggregator_demo_"
SEED_FILE = "seed.sql"  # package data beside this module, also mounted by docker-compose.yml


@dataclass
class SampleDatabase:
    """A seeded throwaway database: its DSN, where it lives, and what to remove on close."""

    dsn: str
    origin: str
    name: str
    kind: str  # "database" or "schema"
    _admin_dsn: str = field(repr=False)
    _server: Any = field(default=None, repr=False)
    _tempdir: Path | None = field(default=None, repr=False)

    async def close(self) -> None:
        """Drop the throwaway database or schema; stop an embedded server, remove its files."""
        server, self._server = self._server, None
        tempdir, self._tempdir = self._tempdir, None
        try:
            if server is None and self.name:
                await _drop(self._admin_dsn, self.kind, self.name)
        finally:
            if server is not None:
                await asyncio.to_thread(server.cleanup)
            if tempdir is not None:
                await asyncio.to_thread(shutil.rmtree, tempdir, True)


def seed_sql() -> str:
    """The sample tables and rows: ``seed.sql``, with no schema names in it."""
    return resources.files("aggregator.samples").joinpath(SEED_FILE).read_text(encoding="utf-8")


async def answers(dsn: str) -> bool:
    """True when a PostgreSQL accepts a connection at ``dsn`` within two seconds."""
    try:
        conn = await asyncpg.connect(dsn, timeout=2.0)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
    await conn.close()
    return True


def where(dsn: str) -> str:
    """``host:port/database`` of a DSN, without credentials."""
    parts = urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def _with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def _with_search_path(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query)) | {"search_path": schema}
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _create(admin_dsn: str, origin: str) -> SampleDatabase:
    """Create a throwaway database (or, without the right to, a schema) on ``admin_dsn``."""
    name = NAME_PREFIX + secrets.token_hex(4)
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.InsufficientPrivilegeError:
            await conn.execute(f'CREATE SCHEMA "{name}"')
            dsn = _with_search_path(admin_dsn, name)
            return SampleDatabase(dsn, origin, name, "schema", admin_dsn)
    finally:
        await conn.close()
    return SampleDatabase(_with_database(admin_dsn, name), origin, name, "database", admin_dsn)


async def _drop(admin_dsn: str, kind: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        if kind == "schema":
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            return
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except asyncpg.PostgresSyntaxError:  # PostgreSQL < 13
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


async def _seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute(seed_sql())
    finally:
        await conn.close()


def _start_embedded(root: Path) -> Any:
    root.chmod(0o755)  # as root, the server's own user must reach its data directory
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset; its fallback is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pgserver: Any = importlib.import_module("pgserver")
    # As root, pgserver runs PostgreSQL as a system user "pgserver" it creates.
    return pgserver.get_server(root / "pgdata", cleanup_mode="delete")


async def _embedded() -> SampleDatabase:
    """An embedded PostgreSQL (pgserver) in a temporary directory, its own database used."""
    root = Path(tempfile.mkdtemp(prefix="aggregator-demo-pg-"))
    try:
        server = await asyncio.to_thread(_start_embedded, root)
        dsn = await asyncio.to_thread(server.get_uri)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    database = SampleDatabase(dsn, "embedded PostgreSQL (pgserver)", "", "server", dsn)
    database._server, database._tempdir = server, root
    return database


async def open_sample_database(
    server_dsn: str | None = None, local_dsn: str = LOCAL_DSN
) -> SampleDatabase:
    """A seeded throwaway PostgreSQL database for the demo (see the module docstring)."""
    if server_dsn:
        origin = f"PostgreSQL at {where(server_dsn)} (--database-url)"
        database = await _create(server_dsn, origin)
    elif await answers(local_dsn):
        database = await _create(local_dsn, f"PostgreSQL at {where(local_dsn)}")
    else:
        database = await _embedded()
    try:
        await _seed(database.dsn)
    except BaseException:
        await database.close()
        raise
    return database
