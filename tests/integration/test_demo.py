"""``aggregator demo``: the real server with the sample upstreams answers with every connector."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from aggregator.demo import Demo, start_demo
from aggregator.samples import SAMPLE_EMAILS
from aggregator.samples.database import open_sample_database
from aggregator.samples.stripe_api import start_fake_stripe
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
META = {"profile_complete", "profile_fetched_at", "profile_cached", "profile_stale"}


@pytest.fixture
async def demo(postgres_dsn: str) -> AsyncIterator[Demo]:
    running = await start_demo(0, database_url=postgres_dsn)
    try:
        yield running
    finally:
        await running.close()


async def get_json(url: str, **params: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as response:
        return response.status, await response.json(content_type=None)


async def test_profile_has_fields_from_every_connector(demo: Demo) -> None:
    status, body = await get_json(
        f"{demo.url}/profile", email="ada@example.com", api_token=demo.token
    )
    assert status == 200
    assert body["profile_complete"] is True
    assert body["stripe_plan"] == "Pro monthly"
    assert body["stripe_mrr"] == "$49.00"
    assert body["db_account_plan"] == "Pro"
    assert body["db_account_seats"] == 12
    assert body["db_invoices_count"] == 3
    assert body["crm_company"] == "Analytical Engines Ltd"
    assert body["crm_tags"] == "vip, beta"
    prefixes = {key.split("_")[0] for key in body if key not in META}
    assert prefixes == {"stripe", "db", "crm"}


@pytest.mark.parametrize("email", SAMPLE_EMAILS)
async def test_every_sample_customer_is_known_to_every_connector(demo: Demo, email: str) -> None:
    status, body = await get_json(f"{demo.url}/profile", email=email, api_token=demo.token)
    assert status == 200
    assert body["profile_complete"] is True
    for prefix in ("stripe_id", "db_account_plan", "crm_owner"):
        assert body[prefix], (email, prefix)


async def test_unknown_customer_and_wrong_token(demo: Demo) -> None:
    status, body = await get_json(
        f"{demo.url}/profile", email="nobody@example.com", api_token=demo.token
    )
    assert (status, set(body)) == (200, META)
    status, _ = await get_json(f"{demo.url}/profile", email="ada@example.com", api_token="nope")
    assert status == 401


async def test_printed_curl_line_and_preview_url_work(demo: Demo) -> None:
    match = re.fullmatch(r"curl '(http://127\.0\.0\.1:\d+/profile\?[^']+)'", demo.curl_line)
    assert match is not None
    async with aiohttp.ClientSession() as session:
        async with session.get(match.group(1)) as response:
            assert response.status == 200
            assert (await response.json())["crm_title"] == "Head of Engineering"
        async with session.get(demo.preview_url) as response:
            assert response.status == 200
            assert "<form" in await response.text()


async def test_close_stops_the_proxy_and_the_upstreams(postgres_dsn: str) -> None:
    demo = await start_demo(0, database_url=postgres_dsn)
    upstreams = [u.split(" at ")[1] for k, u in demo.upstreams.items() if k != "db"]
    await demo.close()
    async with aiohttp.ClientSession() as session:
        for url in [demo.url, *upstreams]:
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(url)


async def test_a_taken_port_is_a_clear_error(postgres_dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Exception, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            await start_demo(port, database_url=postgres_dsn)


async def test_sample_stripe_server_serves_the_stripe_wire_format() -> None:
    fake = await start_fake_stripe(seed=True, key="sk_test_x")
    try:
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": "Bearer sk_test_x"}
            url = f"{fake.url}/v1/customers"
            async with session.get(url, params={"email": "ada@example.com"}, headers=headers) as r:
                body = await r.json()
            async with session.get(url) as unauthorized:
                assert unauthorized.status == 401
    finally:
        await fake.close()
    assert body["object"] == "list"
    assert [c["name"] for c in body["data"]] == ["Ada Lovelace"]


async def test_embedded_postgres_when_nothing_else_answers() -> None:
    """No --database-url and no local server: pgserver in a temp dir, seeded, removed on close."""
    database = await open_sample_database(
        None, local_dsn="postgresql://postgres@127.0.0.1:1/postgres"
    )
    try:
        assert database.origin.startswith("embedded")
        conn = await asyncpg.connect(database.dsn)
        try:
            plan = await conn.fetchval(
                "SELECT plan FROM accounts WHERE email = $1", "ada@example.com"
            )
        finally:
            await conn.close()
        assert plan == "Pro"
        tempdir = database._tempdir
        assert tempdir is not None and tempdir.exists()
    finally:
        await database.close()
    assert not tempdir.exists()


async def demo_objects(dsn: str) -> set[str]:
    """Databases and schemas on the server whose names the demo uses."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'aggregator_demo%' "
            "UNION ALL SELECT nspname FROM pg_namespace WHERE nspname LIKE 'aggregator_demo%'"
        )
    finally:
        await conn.close()
    return {row[0] for row in rows}


async def test_the_demo_uses_a_throwaway_database_and_drops_it(postgres_dsn: str) -> None:
    """Nothing is written into the given database, and what the demo made is gone after."""
    public = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        before = {row[0] for row in await conn.fetch(public)}
        demo = await start_demo(0, database_url=postgres_dsn)
        try:
            match = re.search(
                r"throwaway database (aggregator_demo_[0-9a-f]+)", demo.upstreams["db"]
            )
            assert match is not None, demo.upstreams
            made = match.group(1)
            assert made in await demo_objects(postgres_dsn)
            status, body = await get_json(
                f"{demo.url}/profile", email="ada@example.com", api_token=demo.token
            )
            assert (status, body["db_account_plan"]) == (200, "Pro")
            during = {row[0] for row in await conn.fetch(public)}
        finally:
            await demo.close()
        after = {row[0] for row in await conn.fetch(public)}
    finally:
        await conn.close()
    assert during == before == after
    assert made not in await demo_objects(postgres_dsn)


async def test_two_demos_do_not_share_a_database(postgres_dsn: str) -> None:
    first = await open_sample_database(postgres_dsn)
    second = await open_sample_database(postgres_dsn)
    try:
        assert first.name != second.name
        for database in (first, second):
            conn = await asyncpg.connect(database.dsn)
            try:
                assert await conn.fetchval("SELECT count(*) FROM invoices") == 6
            finally:
                await conn.close()
    finally:
        await first.close()
        await second.close()
    assert not {first.name, second.name} & await demo_objects(postgres_dsn)


async def test_without_the_right_to_create_databases_a_schema_is_used(postgres_dsn: str) -> None:
    role = f"demo_role_{os.getpid()}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.execute(f"CREATE ROLE {role} LOGIN NOCREATEDB")
        database_name = await admin.fetchval("SELECT current_database()")
        await admin.execute(f'GRANT CREATE ON DATABASE "{database_name}" TO {role}')
        parts = urlsplit(postgres_dsn)
        netloc = f"{role}@{parts.hostname}:{parts.port or 5432}"
        limited = urlunsplit(parts._replace(netloc=netloc))
        try:
            database = await open_sample_database(limited)
            try:
                assert database.kind == "schema"
                conn = await asyncpg.connect(database.dsn)
                try:
                    assert await conn.fetchval("SELECT count(*) FROM accounts") == 4
                finally:
                    await conn.close()
            finally:
                await database.close()
            assert database.name not in await demo_objects(postgres_dsn)
        finally:
            await admin.execute(f'REVOKE CREATE ON DATABASE "{database_name}" FROM {role}')
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
async def test_command_prints_a_working_curl_line_and_stops_on_a_signal(
    postgres_dsn: str, stop_signal: signal.Signals
) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aggregator",
        "demo",
        "--port",
        str(port),
        "--database-url",
        postgres_dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=Path(__file__).parent,
    )
    try:
        assert process.stdout is not None
        printed: list[str] = []
        async with asyncio.timeout(60):
            while not any(line.startswith("curl ") for line in printed):
                line = await process.stdout.readline()
                assert line, "the demo exited before printing a curl line"
                printed.append(line.decode().strip())
        curl = next(line for line in printed if line.startswith("curl "))
        url = curl.removeprefix("curl '").removesuffix("'")
        assert url.startswith(f"http://127.0.0.1:{port}/profile?")
        status, body = await get_json(url)
        assert status == 200
        assert body["profile_complete"] is True
        assert {"stripe_plan", "db_account_plan", "crm_title"} <= set(body)
        process.send_signal(stop_signal)
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        assert "demo stopped" in stderr.decode()
        assert "Traceback" not in stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("email", "shown"),
    [
        ("ada@example.com", ["Pro monthly", "$49.00", "Analytical Engines Ltd", "INV-1088"]),
        ("grace@example.com", ["canceled", "(failed)", "Enterprise", "Priya Natarajan"]),
        ("alan@example.com", ["Stripe customer, no subscription.", "Starter", "At risk"]),
        ("nobody@example.com", ["Not a Stripe customer."]),
    ],
)
async def test_sample_template_renders_every_sample_profile(
    demo: Demo, email: str, shown: list[str]
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{demo.url}/preview", data={"email": email, "api_token": demo.token}
        ) as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert body["template_error"] is None
    for text in shown:
        assert text in body["rendered_html"], text
    assert {row["name"]: row["status"] for row in body["connectors"]} == {
        "stripe": "not_found" if email.startswith("nobody") else "ok",
        "db": "not_found" if email.startswith("nobody") else "ok",
        "crm": "not_found" if email.startswith("nobody") else "ok",
    }


SECTIONS = {
    # section -> (a heading or lead text, the key whose value it shows)
    "header": (None, "crm_title"),
    "billing": (">Billing</h4>", "stripe_id"),
    "account": (">Account</h4>", "db_account_plan"),
    "invoices": ("Latest invoices", "db_invoices_0_number"),
    "crm": (">CRM</h4>", "crm_owner"),
}


async def preview(demo: Demo, email: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{demo.url}/preview", data={"email": email, "api_token": demo.token}
        ) as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


@pytest.mark.parametrize("config", [None, ROOT / "config.yaml"], ids=["demo", "shipped"])
async def test_shipped_template_shows_every_section_for_every_sample_customer(
    postgres_dsn: str, config: Path | None
) -> None:
    """The packaged template, the shipped config.yaml and the demo agree on every key."""
    demo = await start_demo(0, database_url=postgres_dsn, config=config)
    try:
        for email in SAMPLE_EMAILS:
            body = await preview(demo, email)
            assert body["template_error"] is None
            html, profile = body["rendered_html"], body["profile"]
            for section, (lead, key) in SECTIONS.items():
                if lead is not None:
                    assert lead in html, (email, section)
                assert str(profile[key]) in html, (email, section, key)
            assert "Some sources did not answer" not in html
    finally:
        await demo.close()


async def test_the_shipped_config_gives_the_demo_keys(postgres_dsn: str) -> None:
    keys = []
    for config in (None, ROOT / "config.yaml"):
        demo = await start_demo(0, database_url=postgres_dsn, config=config)
        try:
            status, body = await get_json(
                f"{demo.url}/profile", email="grace@example.com", api_token=demo.token
            )
        finally:
            await demo.close()
        assert status == 200
        keys.append(set(body))
    assert keys[0] == keys[1]
    assert {"db_account_mrr", "crm_owner", "crm_stage", "stripe_plan"} <= keys[0]


async def test_money_from_postgres_looks_like_stripe_money(demo: Demo) -> None:
    _, body = await get_json(f"{demo.url}/profile", email="ada@example.com", api_token=demo.token)
    assert body["db_account_mrr"] == "$1499.50"
    assert body["db_invoices_0_amount"] == "$1499.50"
    assert body["stripe_mrr"] == "$49.00"


def test_template_command_prints_the_one_template() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aggregator", "template"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    packaged = (ROOT / "aggregator" / "static" / "groove-template.liquid").read_text("utf-8")
    assert result.stdout == packaged
    example = ROOT / "examples" / "groove-template.liquid"
    assert example.is_symlink()
    assert example.resolve() == (ROOT / "aggregator" / "static" / "groove-template.liquid")


def test_demo_with_a_config_that_does_not_exist_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "aggregator", "demo", "--port", "0", "--config", str(missing)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"{missing}: cannot read config file" in result.stderr
    assert "Traceback" not in result.stderr
