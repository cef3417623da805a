"""The rest connector's newer keys against real local upstreams: method/body, auth, errors,
select with lower(), link, then steps, Retry-After dates, redirects and hostile emails."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import time
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from pydantic import ValidationError

from aggregator.emails import parse_email
from connectors.rest import RestSettings
from tests.support.scripted import Make, Start
from tests.support.vendors.base import Handler, reply

HOSTILE = ["o'brien+vip@example.com", 'a"b\\c@example.com', "x`y{email}z@example.com"]


@pytest.mark.parametrize("address", HOSTILE)
async def test_body_placeholders_are_filled_by_data(serve: Start, make: Make, address: str) -> None:
    up = await serve(reply({"results": [{"id": 1}]}))
    conn = await make(
        url=f"{up.url}/search",
        method="POST",
        body={
            "filters": [{"property": "email", "value": "{email}"}],
            "query": "email:{email|quoted}",
            "soql": "Email = '{email|soql}'",
            "limit": 2,
            "literal": "{ id }",
        },
        select="results[0]",
    )

    outcome = await conn.fetch(address)

    assert outcome.status == "ok"
    sent = up.seen[0].json()
    assert sent["filters"][0]["value"] == address
    assert sent["query"] == 'email:"' + address.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert sent["soql"] == "Email = '" + address.replace("\\", "\\\\").replace("'", "\\'") + "'"
    assert (sent["limit"], sent["literal"]) == (2, "{ id }")
    assert up.seen[0].headers["Content-Type"] == "application/json"


async def test_as_sent_filter_uses_the_address_as_groove_wrote_it(serve: Start, make: Make) -> None:
    up = await serve(reply({"id": 1}))
    conn = await make(url=f"{up.url}/c?exact={{email|as_sent}}&norm={{email}}")

    assert (await conn.fetch(parse_email("  Ann.Lee+VIP@Example.com "))).status == "ok"
    assert up.seen[0].query == {
        "exact": "Ann.Lee+VIP@Example.com",
        "norm": "ann.lee+vip@example.com",
    }


@pytest.mark.parametrize(
    ("auth", "header", "expected"),
    [
        ({"bearer": "tok-1"}, "Authorization", "Bearer tok-1"),
        (
            {"basic": {"username": "agent@x.com/token", "password": "pw:1"}},
            "Authorization",
            "Basic " + base64.b64encode(b"agent@x.com/token:pw:1").decode(),
        ),
        ({"header": {"name": "X-Api-Key", "value": "k-2"}}, "X-Api-Key", "k-2"),
    ],
)
async def test_auth_headers_reach_the_upstream(
    serve: Start, make: Make, auth: dict[str, Any], header: str, expected: str
) -> None:
    up = await serve(reply({"id": 1}))
    conn = await make(url=f"{up.url}/c?email={{email}}", auth=auth)

    assert (await conn.fetch("ann@example.com")).status == "ok"
    assert up.seen[0].headers[header] == expected


async def test_query_auth_is_one_more_encoded_parameter(serve: Start, make: Make) -> None:
    up = await serve(reply({"id": 1}))
    conn = await make(
        url=f"{up.url}/persons/search?term={{email}}&exact_match=true",
        auth={"query": {"name": "api_token", "value": "t&k=1 +"}},
    )

    assert (await conn.fetch("o'brien+vip@example.com")).status == "ok"
    assert up.seen[0].query == {
        "term": "o'brien+vip@example.com",
        "exact_match": "true",
        "api_token": "t&k=1 +",
    }


async def test_errors_answer_is_an_error_logged_masked(
    serve: Start, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"data": None, "errors": [{"message": "Customer ann@example.com is locked"}]}
    up = await serve(reply(body))
    conn = await make(
        url=f"{up.url}/graphql", method="POST", body={"q": "{email}"}, errors="errors"
    )

    with caplog.at_level(logging.DEBUG):
        outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.detail) == ("error", "FatalError")
    assert "Customer a***@example.com is locked" in caplog.text
    assert "ann@example.com" not in caplog.text
    assert len(up.seen) == 1  # fatal: not retried


async def test_empty_errors_match_is_fine(serve: Start, make: Make) -> None:
    up = await serve(reply({"data": {"customer": {"id": 3}}, "errors": []}))
    conn = await make(
        url=f"{up.url}/graphql",
        method="POST",
        body={"q": "{email}"},
        errors="errors",
        select="data.customer",
    )

    assert (await conn.fetch("ann@example.com")).fields == {"id": 3}


async def test_select_narrows_a_partial_match_with_lower(serve: Start, make: Make) -> None:
    users = [
        {"id": 1, "email": "JoAnn.O'Brien+VIP@example.com.evil"},
        {"id": 2, "email": "O'Brien+VIP@Example.com"},
    ]
    up = await serve(reply({"users": users, "count": 2}))
    conn = await make(
        url=f"{up.url}/users/search.json?query={{email}}",
        select="users[?lower(email)=='{email|lower}'] | [0]",
    )

    outcome = await conn.fetch("o'brien+vip@example.com")

    assert outcome.fields == users[1]


async def test_link_becomes_the_url_field(serve: Start, make: Make) -> None:
    up = await serve(reply({"data": [{"id": "a/b c", "portal": 77}]}))
    conn = await make(
        url=f"{up.url}/c?email={{email}}",
        select="data[0]",
        fields={"id": "id"},
        link="https://app.example.com/{portal}/contact/{id}",
    )

    outcome = await conn.fetch("ann@example.com")

    assert outcome.fields == {"id": "a/b c", "url": "https://app.example.com/77/contact/a%2Fb%20c"}


def _router(routes: dict[str, Handler]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await routes[request.path](request)

    return handle


async def test_then_steps_run_concurrently_fed_by_the_first_selection(
    serve: Start, make: Make
) -> None:
    arrived = {"deals": asyncio.Event(), "tickets": asyncio.Event()}

    def step(name: str, other: str, body: Any) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            arrived[name].set()
            await asyncio.wait_for(arrived[other].wait(), 5)  # only if both are in flight
            return web.json_response(body)

        return handle

    deals = {"total": 7, "results": [{"name": f"D{i}", "amount": i} for i in range(5)]}
    up = await serve(
        _router(
            {
                "/contacts": reply({"results": [{"id": "c 1", "props": {"first": "Ann"}}]}),
                "/contacts/c 1/deals": step("deals", "tickets", deals),
                "/tickets": step("tickets", "deals", {"tickets": [{"subject": "Help"}]}),
            }
        )
    )
    conn = await make(
        url=f"{up.url}/contacts?email={{email}}",
        select="results[0]",
        fields={"id": "id", "first": "props.first"},
        timeout=10.0,
        then={
            "deals": {
                "url": f"{up.url}/contacts/{{id}}/deals",
                "select": "results",
                "max_items": 2,
                "count": "total",
            },
            "tickets": {
                "url": f"{up.url}/tickets",
                "method": "POST",
                "body": {"requester": "{id}", "email": "{email}"},
                "select": "tickets",
            },
        },
    )

    outcome = await conn.fetch("ann@example.com")

    assert outcome.status == "ok"
    assert outcome.fields == {
        "id": "c 1",
        "first": "Ann",
        "deals": {"0": {"name": "D0", "amount": 0}, "1": {"name": "D1", "amount": 1}, "count": 7},
        "tickets": [{"subject": "Help"}],
    }
    assert {name: step.status for name, step in outcome.steps.items()} == {
        "deals": "ok",
        "tickets": "ok",
    }
    posted = next(seen for seen in up.seen if seen.path == "/tickets")
    assert posted.json() == {"requester": "c 1", "email": "ann@example.com"}
    assert [s.raw_path for s in up.seen if "deals" in s.path] == ["/contacts/c%201/deals"]


async def test_a_failing_step_reports_its_error_and_keeps_the_first_fields(
    serve: Start, make: Make
) -> None:
    up = await serve(
        _router(
            {
                "/contacts": reply({"id": 5, "plan": "Pro"}),
                "/deals": reply({"error": "boom"}, status=500),
                "/notes": reply({"notes": []}),
            }
        )
    )
    conn = await make(
        url=f"{up.url}/contacts?email={{email}}",
        retries=0,
        then={
            "deals": {"url": f"{up.url}/deals?c={{id}}"},
            "notes": {"url": f"{up.url}/notes", "select": "notes"},
        },
    )

    outcome = await conn.fetch("ann@example.com")

    assert outcome.status == "ok"
    assert outcome.fields == {"id": 5, "plan": "Pro", "deals_error": "error", "notes": []}
    assert outcome.steps["deals"].status == "error"
    assert outcome.steps["notes"].status == "ok"
    assert outcome.partial


async def test_a_hanging_step_times_out_inside_the_deadline(serve: Start, make: Make) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({})

    up = await serve(_router({"/contacts": reply({"id": 5}), "/slow": hang}))
    conn = await make(
        url=f"{up.url}/contacts?email={{email}}",
        timeout=0.5,
        then={"slow": {"url": f"{up.url}/slow"}},
    )

    outcome = await conn.fetch("ann@example.com")
    release.set()

    assert outcome.status == "ok"
    assert outcome.fields == {"id": 5, "slow_error": "timeout"}
    assert outcome.steps["slow"].status == "timeout"


async def test_a_step_whose_placeholder_has_no_value_is_skipped(serve: Start, make: Make) -> None:
    up = await serve(reply({"id": 5}))
    conn = await make(
        url=f"{up.url}/contacts?email={{email}}",
        then={"deals": {"url": f"{up.url}/deals/{{owner.id}}"}},
    )

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.fields, outcome.steps["deals"].status) == ({"id": 5}, "not_found")
    assert len(up.seen) == 1


async def test_retry_after_as_an_http_date(serve: Start, make: Make) -> None:
    past = email.utils.formatdate(time.time() - 5, usegmt=True)
    replies = [reply({"error": "slow"}, status=429, **{"Retry-After": past}), reply({"id": 1})]

    async def handle(request: web.Request) -> web.StreamResponse:
        return await replies.pop(0)(request)

    up = await serve(handle)
    conn = await make(url=f"{up.url}/c?email={{email}}", retries=1)

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.attempts, len(up.seen)) == ("ok", 2, 2)


async def test_redirects_are_not_followed_so_credentials_stay_home(
    serve: Start, make: Make
) -> None:
    elsewhere = await serve(reply({"id": 1}))
    home = await serve(
        reply(b"", status=302, Location=f"{elsewhere.url}/steal?email=ann%40example.com")
    )
    conn = await make(url=f"{home.url}/c?email={{email}}", auth={"bearer": "s3cret"})

    outcome = await conn.fetch("ann@example.com")

    assert (outcome.status, outcome.detail) == ("error", "FatalError")
    assert elsewhere.seen == []


async def test_a_huge_step_answer_is_cut_short_and_only_that_step_fails(
    serve: Start, make: Make
) -> None:
    up = await serve(
        _router({"/contacts": reply({"id": 5}), "/big": reply(b"[" + b"1," * 200_000 + b"1]")})
    )
    conn = await make(
        url=f"{up.url}/contacts?email={{email}}",
        max_body_bytes=10_000,
        then={"big": {"url": f"{up.url}/big"}},
    )

    outcome = await conn.fetch("ann@example.com")

    assert outcome.fields == {"id": 5, "big_error": "error"}


@pytest.mark.parametrize("address", HOSTILE)
async def test_hostile_emails_stay_one_path_segment_with_filters(
    serve: Start, make: Make, address: str
) -> None:
    up = await serve(reply({"id": 1}))
    conn = await make(url=f"{up.url}/q/{{email|soql}}/x?raw={{email|quoted}}")

    assert (await conn.fetch(address)).status == "ok"
    segments = up.seen[0].raw_path.split("?")[0].split("/")
    assert segments[:2] == ["", "q"] and segments[3:] == ["x"]
    assert unquote(segments[2]) == address.replace("\\", "\\\\").replace("'", "\\'")


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"url": "{instance_url}/q?e={email}"}, "oauth2"),
        ({"url": "https://x.example/c?e={email|upper}"}, "unknown filter"),
        ({"url": "https://x.example/c?e={email|soql|as_sent}"}, "unknown filter"),
        ({"url": "https://x.example/c?e={email}", "auth": {}}, "exactly one"),
        (
            {
                "url": "https://x.example/c?e={email}",
                "auth": {"bearer": "a", "query": {"name": "k", "value": "v"}},
            },
            "exactly one",
        ),
        ({"url": "https://x.example/c?e={email}", "auth": {"bearer": ""}}, "empty"),
        (
            {
                "url": "https://x.example/c?e={email}",
                "auth": {"bearer": "t"},
                "headers": {"authorization": "Bearer x"},
            },
            "set by auth",
        ),
        (
            {"url": "https://x.example/c?e={email}", "then": {"Deals!": {"url": "https://x/y"}}},
            "step name",
        ),
        (
            {"url": "https://x.example/c?e={email}", "then": {"d": {"url": "https://{id}.x/"}}},
            "host",
        ),
        ({"url": "https://x.example/c", "method": "POST", "body": {"q": "x"}}, "{email}"),
        ({"url": "https://x.example/c?e={email}", "errors": "errors[0"}, "JMESPath"),
        (
            {
                "url": "https://x.example/c",
                "auth": {"oauth2": {"token_url": "https://t/x", "client_id": "i"}},
            },
            "client_secret",
        ),
        (
            {
                "url": "https://x.example/c?e={email}",
                "auth": {
                    "oauth2": {
                        "token_url": "https://t/x",
                        "client_id": "i",
                        "client_secret": "s",
                        "grant": "refresh_token",
                    }
                },
            },
            "refresh_token",
        ),
    ],
)
def test_settings_refuse_bad_new_keys(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem.replace("{", r"\{")):
        RestSettings(**{"type": "rest", **settings})


def test_a_secret_in_auth_is_not_in_the_settings_repr() -> None:
    settings = RestSettings.model_validate(
        {"type": "rest", "url": "https://x.example/c?e={email}", "auth": {"bearer": "t0p-s3cret"}}
    )
    assert "t0p-s3cret" not in repr(settings)
