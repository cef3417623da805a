"""The command line as an operator uses it: check, preview, purge, config errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import redis.asyncio as redis

from aggregator.cache import hash_email
from aggregator.config import load_settings
from aggregator.samples.stripe_api import FakeStripe
from tests.support.pg import PgSchema
from tests.support.proxy import TOKEN, running_proxy
from tests.support.serve import ROOT, aggregator
from tests.support.upstreams import FakeCrm


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


async def test_shipped_config_passes_check_with_no_environment() -> None:
    env = {k: "" for k in ("GROOVE_API_TOKEN", "REDIS_URL", "DATABASE_URL", "STRIPE_API_KEY")}
    code, out, _ = await aggregator("check", "--config", str(ROOT / "config.yaml"), env=env)
    assert code == 0, out
    assert "all checks passed" in out


async def test_check_names_a_broken_query_and_an_invalid_stripe_key(
    tmp_path: Path, fake_stripe: FakeStripe, pg_schema: PgSchema, crm: FakeCrm
) -> None:
    config = write(
        tmp_path / "config.yaml",
        f"""\
        auth: {{api_tokens: ["{TOKEN}"]}}
        connectors:
          stripe:
            type: stripe
            api_key: sk_test_wrong_key_123
            api_base: {fake_stripe.url}
          db:
            type: postgres
            dsn: ${{DSN}}
            queries:
              account: "SELECT plan FROM accounts WHERE email = $1"
              invoices: "SELECT amount FROM invoicez WHERE email = $1"
          crm:
            type: rest
            url: "{crm.template}"
        """,
    )
    code, out, err = await aggregator("check", "--config", str(config), env={"DSN": pg_schema.dsn})
    assert code == 1
    assert "FAIL stripe (stripe): stripe: invalid API key" in out
    assert "FAIL db (postgres): query 'invoices'" in out
    assert "invoicez" in out
    assert "ok   crm (rest)" in out
    assert "sk_test_wrong_key_123" not in out + err


async def test_config_error_names_file_line_and_field(tmp_path: Path) -> None:
    config = write(
        tmp_path / "config.yaml",
        """\
        auth: {api_tokens: ["x"]}
        server:
          deadline: soon
        """,
    )
    code, _, err = await aggregator("serve", "--config", str(config))
    assert code == 2
    assert f"{config}:3: server.deadline" in err


async def test_missing_variable_is_refused_by_name(tmp_path: Path) -> None:
    config = write(tmp_path / "config.yaml", 'auth: {api_tokens: ["${NOPE_TOKEN}"]}\n')
    code, _, err = await aggregator("check", env={"AGGREGATOR_CONFIG": str(config)})
    assert code == 2
    assert f"{config}:1: auth.api_tokens" in err
    assert "NOPE_TOKEN" in err


async def test_preview_prints_profile_connectors_and_rendered_template(
    tmp_path: Path, crm: FakeCrm
) -> None:
    config = write(
        tmp_path / "config.yaml",
        f"""\
        auth: {{api_tokens: ["{TOKEN}"]}}
        connectors:
          crm: {{type: rest, url: "{crm.template}", select: "data[0]"}}
        """,
    )
    template = write(
        tmp_path / "t.liquid",
        "Hi {{ first_name }}: {% if crm_plan_name %}{{ crm_plan_name | upcase }}{% endif %}",
    )
    crm.contacts["ada.lovelace@example.com"] = crm.contacts["ada@example.com"]
    code, out, err = await aggregator(
        "preview", "Ada.Lovelace@example.com", "--config", str(config), "--template", str(template)
    )
    assert code == 0, err
    assert '"crm_plan_name": "Pro"' in out
    assert "Hi Ada: PRO" in out
    assert "crm" in err and "ok" in err


async def test_purge_drops_the_cached_profile(
    tmp_path: Path, crm: FakeCrm, redis_url: str, cache_namespace: str
) -> None:
    config = write(
        tmp_path / "config.yaml",
        f"""\
        auth: {{api_tokens: ["{TOKEN}"]}}
        cache: {{url: "{redis_url}", namespace: "{cache_namespace}"}}
        connectors:
          crm: {{type: rest, url: "{crm.template}", select: "data[0]"}}
        """,
    )
    settings = load_settings(config)
    async with running_proxy(settings) as proxy:
        await proxy.profile("ada@example.com")
    client = redis.Redis.from_url(redis_url)
    try:
        pattern = f"{cache_namespace}:*:profile:{hash_email('ada@example.com')}"
        (key,) = await client.keys(pattern)
        stored = await client.get(key)
        assert isinstance(stored, bytes)
        assert b"Pro" in stored
        code, out, _ = await aggregator("purge", "ADA@example.com", "--config", str(config))
        assert code == 0
        assert "purged" in out
        assert b"Pro" not in (await client.get(key) or b"")
    finally:
        await client.aclose()
    async with running_proxy(settings) as proxy:
        _, body = await proxy.profile("ada@example.com")
    assert body["profile_cached"] is False
    assert body["crm_plan_name"] == "Pro"
    assert crm.calls["ada@example.com"] == 2


async def test_preview_reports_a_template_error_in_one_line(tmp_path: Path, crm: FakeCrm) -> None:
    config = write(
        tmp_path / "config.yaml",
        f"""\
        auth: {{api_tokens: ["{TOKEN}"]}}
        connectors:
          crm: {{type: rest, url: "{crm.template}", select: "data[0]"}}
        """,
    )
    template = write(tmp_path / "t.liquid", "{% if crm_plan_name %}unclosed")
    code, out, err = await aggregator(
        "preview", "ada@example.com", "--config", str(config), "--template", str(template)
    )
    assert code == 1
    assert '"crm_plan_name": "Pro"' in out
    assert "template error:" in err
    assert "Traceback" not in err


async def test_purge_on_the_memory_cache_says_how_to_purge_the_running_server(
    tmp_path: Path,
) -> None:
    config = write(
        tmp_path / "config.yaml",
        f"""\
        server: {{path: /groove/profile}}
        auth: {{api_tokens: ["{TOKEN}"]}}
        """,
    )
    code, out, _ = await aggregator("purge", "ada@example.com", "--config", str(config))
    assert code == 0
    assert "POST /groove/profile/purge?email=" in out
