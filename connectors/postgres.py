"""The ``postgres`` connector: one or several SQL queries, the email as ``$1``, on an asyncpg pool.

The pool is made in ``open()``; when the database is down then, the proxy still starts
and the pool is made by the first fetch that finds the database back. Dead connections
(after a server restart) are replaced by asyncpg on the next acquire; the base class
retries a dropped connection once, on a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import asyncpg
import orjson
from asyncpg import exceptions as pgerr
from asyncpg.pool import PoolConnectionProxy
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aggregator.errors import ConnectorError, FatalError, RetriableError, UnavailableError
from aggregator.formats import FieldFormat, FormatSpec, apply_formats, parse_formats
from aggregator.merge import TRUNCATED
from connectors.base import Connector, ConnectorSettings

log = logging.getLogger("aggregator.connector.postgres")

SINGLE_QUERY = "query"
MAX_ROWS = 10_000
"""Rows a ``many: true`` query reads at most (so ``<name>_count`` stops there too)."""
MAX_JSON_CHARS = 1_048_576
"""A longer JSON or JSONB value is shown as ``"..."`` instead of parsed (as rest's body cap)."""
DSN_SCHEMES = ("postgresql", "postgres")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,20}")
APPLICATION_NAME = "groove-profile-aggregator"
_SESSION_DEFAULTS = {"application_name": APPLICATION_NAME, "default_transaction_read_only": "on"}

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    pgerr.CannotConnectNowError,
    pgerr.PostgresConnectionError,
    pgerr.TooManyConnectionsError,
    pgerr.AdminShutdownError,
    pgerr.CrashShutdownError,
)


class QuerySpec(BaseModel):
    """One named query of ``queries``; ``many`` returns every row as a list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sql: str = Field(min_length=1)
    many: bool = False


class PostgresSettings(ConnectorSettings):
    """Keys of a ``type: postgres`` connector."""

    dsn: SecretStr = Field(description="postgresql:// URL; keep the password in the environment.")
    query: str | None = Field(None, min_length=1, description="SQL taking the email as $1.")
    queries: dict[str, str | QuerySpec] | None = Field(
        None, description="Several named queries, each taking the email as $1."
    )
    formats: dict[str, FormatSpec] = Field(
        default_factory=dict,
        description="Column -> display format (money:eur, money:@currency, cents:usd, date, "
        "datetime), applied to the columns of every query.",
    )
    min_size: int = Field(1, ge=0, description="Connections the pool keeps open.")
    max_size: int = Field(10, ge=1, description="Connections the pool opens at most.")
    statement_timeout: float | None = Field(
        None, gt=0, description="Seconds before the server cancels a query (default: timeout)."
    )
    timeout: float = Field(1.0, gt=0, description="Seconds this connector may take per profile.")

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        dsn = value.get_secret_value().strip()
        if not dsn and info.data.get("enabled") is False:
            return value  # a disabled connector may leave DATABASE_URL empty
        scheme, separator, _ = dsn.partition("://")
        if separator and scheme.lower() in DSN_SCHEMES:
            return value
        if not dsn:
            problem = "is empty"
        elif separator and _SCHEME.fullmatch(scheme):
            problem = f"is a {scheme.lower()}:// URL"
        else:
            problem = "is not a URL"
        # Only the scheme is shown: the rest may hold a password.
        raise ValueError(f"{problem}; it must be a postgresql:// (or postgres://) URL")

    @model_validator(mode="after")
    def _check_shape(self) -> PostgresSettings:
        if (self.query is None) == (self.queries is None):
            raise ValueError("set exactly one of 'query' and 'queries'")
        if self.queries is not None and not self.queries:
            raise ValueError("'queries' must name at least one query")
        if self.min_size > self.max_size:
            raise ValueError("'min_size' must not exceed 'max_size'")
        return self

    def specs(self) -> dict[str, QuerySpec]:
        """Every configured query by name; a single ``query`` is named ``query``."""
        if self.query is not None:
            return {SINGLE_QUERY: QuerySpec(sql=self.query)}
        assert self.queries is not None
        return {
            name: spec if isinstance(spec, QuerySpec) else QuerySpec(sql=spec)
            for name, spec in self.queries.items()
        }


class PostgresConnector(Connector[PostgresSettings]):
    """Looks the customer up in PostgreSQL with the configured query or queries."""

    settings_model = PostgresSettings

    def __init__(self, name: str, settings: PostgresSettings) -> None:
        super().__init__(name, settings)
        self._specs = settings.specs()
        self._formats: dict[str, FieldFormat] = parse_formats(settings.formats)
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._secrets = _secrets_of(settings.dsn.get_secret_value())
        self._closed = False
        self._columns: dict[str, list[str]] = {}

    async def open(self, session: aiohttp.ClientSession) -> None:
        """Make the pool now if the database answers; otherwise the first fetch will."""
        self._closed = False
        try:
            async with asyncio.timeout(self.settings.timeout * 2):
                await self._get_pool()
        except (ConnectorError, TimeoutError) as exc:
            log.warning(
                "postgres connector %s: database not reachable at start (%s); "
                "will connect on the next fetch",
                self.name,
                str(exc) or type(exc).__name__,
            )

    async def close(self) -> None:
        """Close the pool, giving in-flight queries a moment before terminating them."""
        async with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(max(self.settings.timeout, 1.0)):
                await pool.close()
        except TimeoutError:
            pool.terminate()

    async def check(self) -> None:
        """Connect and PREPARE every query, naming each one that the server rejects."""
        problems: list[str] = []
        try:
            async with (
                asyncio.timeout(max(5.0, self.settings.timeout * 3)),
                self._connection() as conn,
            ):
                for name, spec in self._specs.items():
                    try:
                        statement = await conn.prepare(spec.sql)
                    except (pgerr.PostgresError, pgerr.InterfaceError) as exc:
                        mapped = self._translate(exc)
                        if not isinstance(mapped, FatalError):
                            raise mapped from exc
                        problems.append(f"{self._label(name)}: {mapped}")
                        continue
                    self._columns[name] = [a.name for a in statement.get_attributes()]
                    count = len(statement.get_parameters())
                    if count != 1:
                        problems.append(
                            f"{self._label(name)}: takes {count} parameters; "
                            "it must take the email as $1 and nothing else"
                        )
        except TimeoutError as exc:
            raise UnavailableError("postgres did not answer in time") from exc
        if problems:
            raise FatalError("; ".join(problems))

    def declared_shape(self) -> Mapping[str, Any] | None:
        """The columns of each query, once ``check`` has prepared them all."""
        if set(self._columns) != set(self._specs):
            return None
        if self.settings.query is not None:
            return dict.fromkeys(self._columns[SINGLE_QUERY])
        shape: dict[str, Any] = {}
        for name, spec in self._specs.items():
            row = dict.fromkeys(self._columns[name])
            shape[name] = [row] if spec.many else row
        return shape

    def _label(self, name: str) -> str:
        return "query" if self.settings.query is not None else f"query {name!r}"

    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        pool = await self._get_pool()
        if self.settings.query is not None:
            return await self._fetch_row(pool, self._specs[SINGLE_QUERY].sql, email)
        names = list(self._specs)
        tasks = [asyncio.create_task(self._run(pool, self._specs[n], email)) for n in names]
        try:
            results = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if not any(results):
            return None
        return {name: res for name, res in zip(names, results, strict=True) if res is not None}

    async def _run(
        self, pool: asyncpg.Pool, spec: QuerySpec, email: str
    ) -> dict[str, Any] | list[dict[str, Any]] | None:
        if spec.many:
            return await self._fetch_rows(pool, spec.sql, email)
        return await self._fetch_row(pool, spec.sql, email)

    async def _fetch_row(self, pool: asyncpg.Pool, sql: str, email: str) -> dict[str, Any] | None:
        async with self._errors(), pool.acquire() as conn:
            row = await conn.fetchrow(sql, email)
        return None if row is None else self._display(_row(row))

    async def _fetch_rows(self, pool: asyncpg.Pool, sql: str, email: str) -> list[dict[str, Any]]:
        # A cursor reads MAX_ROWS at most: a query matching millions of rows costs no more.
        async with self._errors(), pool.acquire() as conn, conn.transaction(readonly=True):
            cursor = await conn.cursor(sql, email)
            rows = await cursor.fetch(MAX_ROWS)
        return [self._display(_row(row)) for row in rows]

    def _display(self, row: dict[str, Any]) -> dict[str, Any]:
        return apply_formats(row, self._formats) if self._formats else row

    async def _get_pool(self) -> asyncpg.Pool:
        pool = self._pool
        if pool is not None:
            return pool
        async with self._pool_lock:
            if self._closed:
                raise UnavailableError("connector is closed")
            if self._pool is None:
                async with self._errors():
                    self._pool = await asyncpg.create_pool(**self._connect_kwargs())
            return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection | PoolConnectionProxy]:
        """A connection from the pool when there is one, else a one-off one (for ``check``)."""
        async with self._errors():
            if self._pool is not None:
                async with self._pool.acquire() as conn:
                    yield conn
                return
            kwargs = self._connect_kwargs()
            for key in ("min_size", "max_size", "init"):
                kwargs.pop(key)
            conn = await asyncpg.connect(**kwargs)
            try:
                await _init_connection(conn)
                yield conn
            finally:
                await conn.close()

    def _connect_kwargs(self) -> dict[str, Any]:
        dsn = self.settings.dsn.get_secret_value()
        statement_timeout = self.settings.statement_timeout or self.settings.timeout
        # Defaults a DSN parameter (sent by asyncpg as a server setting) may override.
        server_settings = {
            key: value for key, value in _SESSION_DEFAULTS.items() if key not in _dsn_params(dsn)
        }
        server_settings["statement_timeout"] = str(max(1, round(statement_timeout * 1000)))
        return {
            "dsn": dsn,
            "min_size": self.settings.min_size,
            "max_size": self.settings.max_size,
            "init": _init_connection,
            "timeout": self.settings.timeout,
            "server_settings": server_settings,
        }

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """Turn asyncpg's and the socket's exceptions into the connector error types."""
        try:
            yield
        except (TimeoutError, asyncio.CancelledError, ConnectorError):
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> ConnectorError:
        message = self._scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, pgerr.QueryCanceledError):
            return RetriableError(f"query cancelled (statement timeout): {message}")
        if isinstance(exc, _CONNECTION_ERRORS):
            return UnavailableError(f"database unreachable: {message}")
        if isinstance(exc, pgerr.InterfaceError) and "clos" in str(exc):
            return UnavailableError(f"connection lost: {message}")
        if isinstance(
            exc,
            (
                pgerr.TransactionRollbackError,
                pgerr.InsufficientResourcesError,
                pgerr.OutdatedSchemaCacheError,
            ),
        ):
            return RetriableError(message)
        if isinstance(exc, pgerr.PostgresError):
            return FatalError(self._scrub(str(exc)))
        return FatalError(message)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Decode JSON and JSONB into dicts and lists, so the merge can flatten them."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            schema="pg_catalog",
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=_json_value,
        )


def _json_value(text: str) -> Any:
    """A JSON column's value; one over MAX_JSON_CHARS is not parsed (its keys cost memory)."""
    return orjson.loads(text) if len(text) <= MAX_JSON_CHARS else TRUNCATED


def _row(record: asyncpg.Record) -> dict[str, Any]:
    return {key: _plain(value) for key, value in record.items()}


def _plain(value: Any) -> Any:
    """Rows in composites become dicts, arrays lists, bytea hex; the merge converts the rest."""
    if isinstance(value, asyncpg.Record):
        return _row(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


def _dsn_params(dsn: str) -> set[str]:
    try:
        return set(parse_qs(urlsplit(dsn).query))
    except ValueError:
        return set()


def _secrets_of(dsn: str) -> list[str]:
    """The DSN and any password in it, longest first, to scrub from messages."""
    secrets = [dsn]
    try:
        parts = urlsplit(dsn)
        if parts.password:
            secrets += [parts.password, unquote(parts.password)]
        secrets.extend(parse_qs(parts.query).get("password", []))
    except ValueError:
        pass
    return sorted({s for s in secrets if s}, key=len, reverse=True)
