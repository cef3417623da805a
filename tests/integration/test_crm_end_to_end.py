"""Every preset and every newer rest key through the real CLI: ``aggregator serve`` answering
Groove for ``o'brien+vip@example.com`` (a quote for SOQL, a plus for URLs), ``aggregator
check`` exercising auth and listing colliding keys, ``aggregator preview`` showing steps.
The vendors are the local fakes of tests/support/vendors (their modules cite the
references they follow)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import aiohttp

from tests.support.serve import ServeProcess, aggregator
from tests.support.vendors.stack import EMAIL, Stack

GROOVE_TOKEN = "e2e-groove-token-5f2a9c"


def write_config(tmp_path: Path, stack: Stack, *, merge: str = "") -> Path:
    path = tmp_path / "config.yaml"
    head = f'auth: {{api_tokens: ["{GROOVE_TOKEN}"]}}\nserver: {{deadline: 5.0}}\n'
    path.write_text(head + merge + "\nconnectors:\n" + stack.connectors_yaml(), encoding="utf-8")
    return path


async def test_serve_answers_groove_from_every_preset(vendor_stack: Stack, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, vendor_stack, merge="merge: {max_list_items: 3}\nlogging: {level: DEBUG}"
    )
    server = ServeProcess(config, tmp_path / "serve.log", env=vendor_stack.env())
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
            url = f"{server.url}/profile?email={quote(EMAIL, safe='')}&api_token={GROOVE_TOKEN}"
            async with session.get(url) as response:
                assert response.status == 200, await response.text()
                profile = await response.json()
    finally:
        server.stop()

    expected = {
        # rest: POST body, bearer auth, errors, select with lower(), link, then with count
        "person_id": "p-1",
        "plan": "Enterprise",
        "seats": 40,
        "url": "https://crm.example.com/people/p-1",
        "notes_0_text": "note 0",
        "notes_1_text": "note 1",
        "notes_count": 4,
        # a second connector sharing prefix "": listed second, its plan is renamed
        "extra_plan": "Legacy",
        "hubspot_first_name": "Pat",
        "hubspot_deals_0_name": "Renewal",
        "hubspot_deals_count": 1,
        "hubspot_url": "https://app.hubspot.com/contacts/62515/record/0-1/101",
        "salesforce_account": "Acme Corp",
        "salesforce_type": "Contact",
        "salesforce_url": f"{vendor_stack.salesforce.url}/lightning/r/Contact/003A/view",
        "intercom_conversations_0_title": "Invoice?",
        "intercom_conversations_count": 1,
        "intercom_created_at": "2023-11-14T22:13:20Z",
        "shop_total_spent": "$19.99",
        "shop_orders_count": 1,
        "shop_orders_0_name": "#1001",
        "shop_url": "https://admin.shopify.com/store/acme/customers/207119551",
        "zendesk_tickets_0_subject": "Login",
        "zendesk_tickets_count": 1,
        "zendesk_url": "https://acme.zendesk.com/agent/users/12",
        "pipedrive_deals_0_title": "Upsell",
        "pipedrive_deals_0_value": "€900.00",
        "pipedrive_url": "https://acme.pipedrive.com/person/7",
        "profile_complete": True,
    }
    assert {key: profile.get(key) for key in expected} == expected, server.output()
    assert not [key for key in profile if key.endswith("_error")]
    soql = vendor_stack.salesforce.requests_to("/services/data/")[0].query["q"]
    assert "Email = 'o\\'brien+vip@example.com'" in soql
    assert vendor_stack.zendesk.requests_to("/api/v2/users/search")[0].query["query"] == EMAIL
    assert vendor_stack.pipedrive.requests_to("/api/v1/persons/search")[0].query["term"] == EMAIL
    logged = server.output()
    for secret in [*vendor_stack.env().values(), *vendor_stack.salesforce.issued]:
        assert secret not in logged


async def test_check_exercises_auth_and_lists_colliding_keys(
    vendor_stack: Stack, tmp_path: Path
) -> None:
    config = write_config(tmp_path, vendor_stack)
    env = {**vendor_stack.env(), "SALESFORCE_CLIENT_SECRET": "not-the-secret"}

    code, out, err = await aggregator("check", "--config", str(config), env=env, timeout=90)

    assert code == 1, out + err
    for name, kind in [
        ("crm", "rest"),
        ("hubspot", "hubspot"),
        ("intercom", "intercom"),
        ("shop", "shopify"),
        ("zendesk", "zendesk"),
        ("pipedrive", "pipedrive"),
    ]:
        assert f"ok   {name} ({kind})" in out
    assert (
        "FAIL salesforce (salesforce): auth (oauth2): OAuth token request refused: "
        "HTTP 400 (invalid_client)"
    ) in out
    assert "  plan: crm keeps it; extra's is extra_plan" in out
    assert "not-the-secret" not in out + err
    assert len(vendor_stack.hubspot.requests_to("/crm/v3/objects/contacts/search")) == 1


async def test_check_names_a_refused_bearer_token(vendor_stack: Stack, tmp_path: Path) -> None:
    config = write_config(tmp_path, vendor_stack)
    env = {**vendor_stack.env(), "HUBSPOT_TOKEN": "pat-revoked"}

    code, out, err = await aggregator("check", "--config", str(config), env=env, timeout=90)

    assert code == 1
    assert "FAIL hubspot (hubspot): auth (bearer): HTTP 401" in out
    assert "pat-revoked" not in out + err


async def test_preview_shows_each_step(vendor_stack: Stack, tmp_path: Path) -> None:
    config = write_config(tmp_path, vendor_stack)
    vendor_stack.zendesk.fail_next(500, b"boom", path="/api/v2/users/12/tickets", times=5)

    code, out, err = await aggregator(
        "preview", EMAIL, "--config", str(config), env=vendor_stack.env(), timeout=90
    )

    assert code == 0, err
    assert '"zendesk_tickets_error": "error"' in out
    assert '"profile_complete": false' in out
    lines = err.splitlines()
    assert any(line.split()[:3] == ["then", "notes", "ok"] for line in lines), err
    assert any(line.split()[:3] == ["then", "tickets", "error"] for line in lines), err
    assert any(line.split()[:3] == ["then", "deals", "ok"] for line in lines), err
