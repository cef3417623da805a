"""The preview page over HTTP: the HTML page, and the JSON its form posts to."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pytest

from aggregator.preview import sample_template
from tests.support.proxy import TOKEN, Proxy, running_proxy, settings_from
from tests.support.upstreams import FakeCrm

ROOT = Path(__file__).resolve().parents[2]


def connectors(crm: FakeCrm) -> dict[str, dict[str, Any]]:
    return {
        "crm": {"type": "rest", "url": crm.template, "select": "data[0]", "timeout": 0.5},
        "billing": {
            "type": "rest",
            "url": "http://127.0.0.1:1/contacts?email={email}",
            "timeout": 0.5,
            "retries": 0,
        },
    }


async def post(
    proxy: Proxy, data: dict[str, str], *, as_json: bool = False
) -> tuple[int, dict[str, Any]]:
    kwargs: dict[str, Any] = {"json": data} if as_json else {"data": data}
    async with proxy.session.post(f"{proxy.url}/preview", **kwargs) as response:
        return response.status, await response.json(content_type=None)


def test_packaged_template_is_the_example() -> None:
    example = (ROOT / "examples" / "groove-template.liquid").read_text(encoding="utf-8")
    assert sample_template() == example
    assert "{% if stripe_plan %}" in example
    assert '| date: "%b %d, %Y"' in example
    assert "{{ crm_" in example and "{{ db_" in example


@pytest.mark.parametrize("query", ["", "?api_token=", "?api_token=wrong"])
async def test_page_needs_the_token(crm: FakeCrm, query: str) -> None:
    async with (
        running_proxy(settings_from(connectors(crm))) as proxy,
        proxy.session.get(f"{proxy.url}/preview{query}") as response,
    ):
        assert response.status == 401
        assert response.content_type == "application/json"
        assert "api_token" in (await response.json())["error"]


async def test_page_has_the_form_and_the_sample_template(crm: FakeCrm) -> None:
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        params = {"api_token": TOKEN, "email": 'x"><script>@example.com'}
        async with proxy.session.get(f"{proxy.url}/preview", params=params) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            policy = response.headers["Content-Security-Policy"]
            assert response.headers["Referrer-Policy"] == "no-referrer"
            page = await response.text()
    assert '<form id="preview-form" method="post" action="/preview">' in page
    assert f'<input type="hidden" name="api_token" value="{TOKEN}">' in page
    assert 'type="email"' in page and 'name="email"' in page
    textarea = re.search(
        r'<textarea id="template" name="template"[^>]*>(.*?)</textarea>', page, re.S
    )
    assert textarea is not None
    assert html.unescape(textarea.group(1)) == sample_template()
    frame = re.search(r'<iframe id="sidebar"[^>]*>', page)
    assert frame is not None and 'sandbox="allow-same-origin"' in frame.group(0)
    assert "allow-scripts" not in frame.group(0)
    assert "<script>@example.com" not in page
    # Self-contained: no asset from anywhere else, and the policy would block one anyway.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "default-src 'none'" in policy
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce is not None and f'<script nonce="{nonce.group(1)}">' in page


@pytest.mark.parametrize(
    "email",
    [
        "__TEMPLATE__",
        "__TEMPLATE____NONCE____TOKEN__",
        'a"__TEMPLATE__@example.com',
        "x</textarea><script>alert(1)</script>@example.com",
    ],
)
async def test_page_values_are_escaped_and_never_expanded_again(crm: FakeCrm, email: str) -> None:
    """Issue 11: ``email=__TEMPLATE__`` once spliced the whole template into the attribute."""
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        params = {"api_token": TOKEN, "email": email}
        async with proxy.session.get(f"{proxy.url}/preview", params=params) as response:
            assert response.status == 200
            page = await response.text()
            nonce = re.search(r"'nonce-([^']+)'", response.headers["Content-Security-Policy"])
    field = re.search(r'<input type="email" id="email" name="email" value="([^"]*)"', page)
    assert field is not None
    assert html.unescape(field.group(1)) == email
    textarea = re.search(r'<textarea id="template"[^>]*>(.*?)</textarea>', page, re.S)
    assert textarea is not None
    assert html.unescape(textarea.group(1)) == sample_template()
    assert page.count("{% comment %}") == 1
    assert nonce is not None and page.count(nonce.group(1)) == 1
    assert "<script>alert(1)" not in page


async def test_page_with_an_email_is_a_deep_link(crm: FakeCrm) -> None:
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        params = {"api_token": TOKEN, "email": "ada@example.com"}
        async with proxy.session.get(f"{proxy.url}/preview", params=params) as response:
            page = await response.text()
    assert 'name="email" value="ada@example.com"' in page
    assert "form.requestSubmit()" in page


async def test_preview_renders_the_template_with_the_profile(crm: FakeCrm) -> None:
    template = (
        "<b>{{ first_name }}</b> {% if crm_plan_name %}plan {{ crm_plan_name | upcase }}{% endif %}"
        "{% if billing_x %}never{% endif %}"
    )
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        status, body = await post(
            proxy, {"email": " Ada@Example.com", "template": template, "api_token": TOKEN}
        )
    assert status == 200
    assert body["email"] == "ada@example.com"
    assert body["rendered_html"] == "<b>Ada</b> plan PRO"
    assert body["template_error"] is None
    assert body["profile"]["crm_plan_name"] == "Pro"
    assert body["profile"]["profile_complete"] is False
    assert body["profile"]["billing_error"] == "unavailable"
    assert body["cache_state"] == "bypass"
    rows = {row["name"]: row for row in body["connectors"]}
    assert list(rows) == ["crm", "billing"]
    assert rows["crm"]["status"] == "ok"
    assert rows["crm"]["keys"] == ["crm_plan_name", "crm_seats", "crm_tags"]
    assert rows["crm"]["elapsed_ms"] >= 0
    assert rows["billing"]["status"] == "unavailable"
    assert rows["billing"]["keys"] == []
    assert rows["billing"]["detail"]


async def test_preview_accepts_json_and_defaults_to_the_sample_template(crm: FakeCrm) -> None:
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        status, body = await post(
            proxy, {"email": "bob@example.com", "api_token": TOKEN}, as_json=True
        )
    assert status == 200
    assert body["template_error"] is None
    assert "Not a Stripe customer." in body["rendered_html"]
    assert "Some sources did not answer" in body["rendered_html"]


async def test_preview_bypasses_the_cache_and_reports_its_state(crm: FakeCrm) -> None:
    form = {"email": "ada@example.com", "template": "", "api_token": TOKEN}
    async with running_proxy(settings_from({"crm": connectors(crm)["crm"]})) as proxy:
        _, before = await post(proxy, form)
        await proxy.profile("ada@example.com")
        _, after = await post(proxy, form)
    assert before["cached"] == {"state": "none", "fetched_at": None}
    assert before["connectors"][0]["cache"] is None
    assert after["cached"]["state"] == "fresh"
    assert after["connectors"][0]["cache"]["state"] == "fresh"
    assert after["connectors"][0]["cache"]["status"] == "ok"
    # Two previews and one profile request: the previews went upstream, the profile too.
    assert crm.calls["ada@example.com"] == 3


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% if crm_plan_name %}unclosed", "endif"),
        ("{{ crm_plan_name | no_such_filter }}", "no_such_filter"),
        ("{{ crm_seats | divided_by: 0 }}", "divide by 0"),
    ],
)
async def test_a_bad_template_is_reported_not_a_500(
    crm: FakeCrm, template: str, message: str
) -> None:
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        status, body = await post(
            proxy, {"email": "ada@example.com", "template": template, "api_token": TOKEN}
        )
    assert status == 200
    assert body["rendered_html"] is None
    assert message in body["template_error"]
    assert body["profile"]["crm_plan_name"] == "Pro"


@pytest.mark.parametrize("email", ["", "not-an-email", "a@b", "x" * 300 + "@example.com"])
async def test_bad_email_is_400(crm: FakeCrm, email: str) -> None:
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        status, body = await post(proxy, {"email": email, "template": "", "api_token": TOKEN})
    assert status == 400
    assert body["error"]
    assert crm.calls == {}


@pytest.mark.parametrize("token", [None, "", "wrong"])
async def test_api_needs_the_token(crm: FakeCrm, token: str | None) -> None:
    form = {"email": "ada@example.com", "template": ""}
    if token is not None:
        form["api_token"] = token
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        status, body = await post(proxy, form)
    assert status == 401
    assert "api_token" in body["error"]
    assert crm.calls == {}


async def test_token_in_the_query_string_is_accepted(crm: FakeCrm) -> None:
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        url = f"{proxy.url}/preview?api_token={TOKEN}"
        async with proxy.session.post(url, data={"email": "ada@example.com"}) as response:
            assert response.status == 200


async def test_a_huge_template_is_refused(crm: FakeCrm) -> None:
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        form = {"email": "ada@example.com", "template": "x" * 70_000, "api_token": TOKEN}
        status, body = await post(proxy, form)
    assert status == 400
    assert "template" in body["error"]


async def test_upstream_html_reaches_only_the_sandboxed_frame(crm: FakeCrm) -> None:
    crm.contacts["eve@example.com"] = {"note": "<script>alert(1)</script>"}
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        status, body = await post(
            proxy,
            {"email": "eve@example.com", "template": "{{ crm_note }}", "api_token": TOKEN},
        )
    # Groove renders unescaped too: the page shows it in an iframe with sandbox="" only.
    assert status == 200
    assert body["rendered_html"] == "<script>alert(1)</script>"


async def test_malformed_json_body_is_a_400_not_a_500(crm: FakeCrm) -> None:
    async with running_proxy(settings_from(connectors(crm))) as proxy:
        headers = {"Content-Type": "application/json"}
        async with proxy.session.post(
            f"{proxy.url}/preview?api_token={TOKEN}", data=b"{nope", headers=headers
        ) as response:
            assert response.status == 400


async def test_other_methods_are_not_allowed(crm: FakeCrm) -> None:
    async with (
        running_proxy(settings_from(connectors(crm))) as proxy,
        proxy.session.put(f"{proxy.url}/preview?api_token={TOKEN}") as response,
    ):
        assert response.status == 405
