"""Postgres fixtures: a server to test on, a fresh seeded schema per test, a restartable server.

``postgres_dsn`` is ``DATABASE_URL`` when set, else the local server at 127.0.0.1:5432 when
it answers, else an embedded PostgreSQL from ``pgserver``; ``AGGREGATOR_TEST_EMBEDDED=1``
forces the embedded one. ``restartable_postgres`` is a private server on its own port,
never the shared one, that a test may stop and start.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from aggregator.samples.database import answers
from tests.support.net import free_port

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"
EMBEDDED_ENV = "AGGREGATOR_TEST_EMBEDDED"

SCHEMA_SQL = """
CREATE TABLE accounts (
    email text PRIMARY KEY,
    plan text,
    seats int,
    mrr numeric(12, 2),
    signed_up_at timestamptz,
    id uuid,
    tags text[],
    meta jsonb
);
CREATE TABLE invoices (
    email text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    issued_on date NOT NULL
);
INSERT INTO accounts VALUES
    ('ada@example.com', 'Pro', 12, 1499.50, '2021-03-04 05:06:07+00',
     '6f1c2a3b-0d4e-4f5a-9b6c-7d8e9f0a1b2c', ARRAY['vip', 'beta'],
     '{"tier": {"level": 2, "name": "gold"}, "flags": ["a", "b"], "active": true}'),
    ('bob@example.com', 'Free', NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO invoices VALUES
    ('ada@example.com', 100.00, '2024-01-31'),
    ('ada@example.com', 250.25, '2024-02-29'),
    ('carol@example.com', 9.99, '2024-03-01');
"""


def with_server_settings(dsn: str, **settings: str) -> str:
    """The DSN with extra query parameters, which asyncpg sends as server settings."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query)) | settings
    return urlunsplit(parts._replace(query=urlencode(query)))


def _import_pgserver() -> Any:
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset; the fallback is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN of a PostgreSQL to test against (see the module docstring for which)."""
    embedded = os.environ.get(EMBEDDED_ENV, "") not in ("", "0")
    url = os.environ.get("DATABASE_URL")
    if url and not embedded:
        yield url
        return
    if not embedded and asyncio.run(answers(LOCAL_DSN)):
        yield LOCAL_DSN
        return
    pgserver = _import_pgserver()
    # As root, pgserver runs PostgreSQL as a system user "pgserver" it creates.
    server = pgserver.get_server(tmp_path_factory.mktemp("pgserver"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@dataclass(frozen=True, slots=True)
class PgSchema:
    """A seeded schema: ``dsn`` has it as search_path; ``name`` qualifies tables in SQL."""

    name: str
    dsn: str
    base_dsn: str

    async def execute(self, sql: str, *args: Any) -> str:
        """Run one statement in this schema."""
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.execute(sql, *args)
        finally:
            await conn.close()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """Run one query in this schema and return its first value."""
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()


async def create_schema(base_dsn: str) -> PgSchema:
    """Create a uniquely named schema with seeded ``accounts`` and ``invoices`` tables."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(base_dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {name}")
        await conn.execute(f"SET search_path TO {name}")
        await conn.execute(SCHEMA_SQL)
    finally:
        await conn.close()
    return PgSchema(name, with_server_settings(base_dsn, search_path=name), base_dsn)


async def drop_schema(schema: PgSchema) -> None:
    """Drop a schema made by ``create_schema`` and everything in it."""
    conn = await asyncpg.connect(schema.base_dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema.name} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def pg_schema(postgres_dsn: str) -> AsyncIterator[PgSchema]:
    """A fresh seeded schema on the shared test server, dropped after the test."""
    schema = await create_schema(postgres_dsn)
    try:
        yield schema
    finally:
        await drop_schema(schema)


def _bin_dir() -> Path:
    found = sorted(
        (p for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") if Path(p).parts[4].isdigit()),
        key=lambda p: int(Path(p).parts[4]),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    return Path(_import_pgserver().POSTGRES_BIN_PATH)


class RestartablePostgres:
    """A private PostgreSQL on a free 127.0.0.1 port, run with the machine's binaries."""

    def __init__(self, root: Path) -> None:
        self.bin = _bin_dir()
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.user: str | None = None
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root.
            self.user = _unprivileged_user()
            entry = pwd.getpwnam(self.user)
            os.chown(root, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            user=self.user,
            cwd=self.root,
            timeout=60,
        )

    def init(self) -> None:
        """Create the cluster (trust auth, superuser ``postgres``)."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")

    def start_sync(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop_sync(self, mode: str = "fast") -> None:
        """Stop the server, disconnecting every client (``fast``) or not waiting (``immediate``)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        """True while the postmaster is up."""
        result = subprocess.run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            user=self.user,
            cwd=self.root,
            check=False,
        )
        return result.returncode == 0

    async def start(self) -> None:
        """Start the server without blocking the event loop."""
        await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        """Stop the server without blocking the event loop."""
        await asyncio.to_thread(self.stop_sync)


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("no unprivileged user to run PostgreSQL as")


@pytest.fixture(scope="session")
def _restartable_cluster() -> Iterator[RestartablePostgres]:
    root = Path(tempfile.mkdtemp(prefix="aggregator-pg-"))
    server = RestartablePostgres(root)
    try:
        server.init()
        server.start_sync()
        yield server
    finally:
        if server.running:
            server.stop_sync("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def restartable_postgres(_restartable_cluster: RestartablePostgres) -> RestartablePostgres:
    """A private server, running at the start of the test, that the test may stop and start."""
    if not _restartable_cluster.running:
        _restartable_cluster.start_sync()
    return _restartable_cluster
