"""Connectors sharing a prefix coalesce sources: the first listed keeps a key, the other's
value is renamed, and ``aggregator check`` says so beforehand (PostgreSQL columns once
prepared, rest ``fields``); the preview page shows each rest step's status."""

from __future__ import annotations

from pathlib import Path

from tests.support.net import free_port
from tests.support.pg import PgSchema
from tests.support.proxy import TOKEN, running_proxy, settings_from
from tests.support.serve import aggregator
from tests.support.upstreams import FakeCrm


async def test_check_lists_a_column_and_a_field_sharing_the_empty_prefix(
    tmp_path: Path, pg_schema: PgSchema, crm: FakeCrm
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""\
auth: {{api_tokens: ["{TOKEN}"]}}
connectors:
  db:
    type: postgres
    prefix: ""
    dsn: ${{DSN}}
    query: "SELECT plan, seats FROM accounts WHERE email = $1"
  crm:
    type: rest
    prefix: ""
    url: "{crm.template}"
    select: "data[0]"
    fields: {{plan: plan.name, tags: tags}}
""",
        encoding="utf-8",
    )
    code, out, err = await aggregator("check", "--config", str(config), env={"DSN": pg_schema.dsn})

    assert code == 0, out + err
    lines = out.splitlines()
    assert "  plan: db keeps it; crm's is crm_plan" in lines
    assert not any("seats" in line or "tags:" in line for line in lines)


async def test_the_first_listed_keeps_the_key_and_the_other_is_renamed(
    pg_schema: PgSchema, crm: FakeCrm
) -> None:
    settings = settings_from(
        {
            "db": {
                "type": "postgres",
                "prefix": "",
                "dsn": pg_schema.dsn,
                "query": "SELECT plan, seats FROM accounts WHERE email = $1",
            },
            "crm": {
                "type": "rest",
                "prefix": "",
                "url": crm.template,
                "select": "data[0]",
                "fields": {"plan": "plan.name", "tags": "tags"},
            },
        },
        server={"deadline": 3.0},
    )
    crm.contacts["ada@example.com"] = {"plan": {"name": "CRM-Pro"}, "tags": ["vip"]}

    async with running_proxy(settings) as proxy:
        status, profile = await proxy.profile("ada@example.com")

    assert status == 200
    assert (profile["plan"], profile["seats"]) == ("Pro", 12)
    assert (profile["crm_plan"], profile["tags"]) == ("CRM-Pro", "vip")


async def test_the_preview_page_api_reports_each_step(crm: FakeCrm) -> None:
    settings = settings_from(
        {
            "crm": {
                "type": "rest",
                "url": crm.template,
                "select": "data[0]",
                "retries": 0,
                "then": {
                    "again": {"url": crm.url + "/contacts?email={email}", "select": "data"},
                    "missing": {"url": crm.url + "/nowhere/{seats}"},
                    "down": {"url": f"http://127.0.0.1:{free_port()}/x?e={{email}}"},
                },
            }
        },
        server={"deadline": 3.0},
    )

    async with (
        running_proxy(settings) as proxy,
        proxy.session.post(
            f"{proxy.url}/preview",
            json={"email": "ada@example.com", "api_token": TOKEN, "template": "x"},
        ) as response,
    ):
        assert response.status == 200
        body = await response.json()

    steps = {step["name"]: step for step in body["connectors"][0]["steps"]}
    assert steps["again"]["status"] == "ok"
    assert steps["missing"]["status"] == "not_found"  # a 404: nothing to add, no error
    assert steps["down"]["status"] == "unavailable"  # connection refused
    assert body["profile"]["crm_down_error"] == "unavailable"
    assert "crm_missing_error" not in body["profile"]
    assert body["profile"]["profile_complete"] is False


async def test_two_failing_connectors_sharing_a_prefix_both_report(crm: FakeCrm) -> None:
    down = f"http://127.0.0.1:{free_port()}/c?email={{email}}"
    settings = settings_from(
        {
            "billing": {"type": "rest", "prefix": "acct", "url": down, "retries": 0},
            "crm": {"type": "rest", "prefix": "acct", "url": down, "retries": 0},
        }
    )

    async with running_proxy(settings) as proxy:
        _, profile = await proxy.profile("ada@example.com")

    assert (profile["acct_error"], profile["crm_error"]) == ("unavailable", "unavailable")
