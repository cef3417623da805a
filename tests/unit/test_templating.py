"""Placeholders are data, never structure: URL, body, select and header templates."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.emails import Email
from connectors.templating import (
    BodyTemplate,
    Context,
    SelectTemplate,
    TextTemplate,
    UrlTemplate,
    search,
)

# Any text at all, including quotes, backslashes, backticks, braces and control characters.
ANY_TEXT = st.text(min_size=1, max_size=40)


@given(ANY_TEXT)
def test_a_url_value_stays_one_query_value(value: str) -> None:
    url = UrlTemplate("https://api.example.com/v1/c?email={email}&fmt=json").fill(Context(value))

    assert url is not None
    parts = urlsplit(str(url))
    assert (parts.netloc, parts.path) == ("api.example.com", "/v1/c")
    assert parse_qs(parts.query, keep_blank_values=True) == {"email": [value], "fmt": ["json"]}


@given(ANY_TEXT)
def test_a_url_value_stays_one_path_segment(value: str) -> None:
    url = UrlTemplate("https://api.example.com/c/{email}/x").fill(Context(value))

    assert url is not None
    segments = url.raw_path.split("/")
    assert len(segments) == 4 and segments[3] == "x"
    assert unquote(segments[2]) == value


@given(ANY_TEXT)
def test_a_body_value_is_exactly_the_json_string(value: str) -> None:
    body = BodyTemplate({"a": ["{email}"], "b": "x:{email|quoted}", "n": 3}).fill(Context(value))

    assert json.loads(json.dumps(body)) == {
        "a": [value],
        "b": 'x:"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"',
        "n": 3,
    }


@given(ANY_TEXT)
def test_a_select_value_is_a_literal(value: str) -> None:
    document = {"users": [{"email": value.lower(), "id": 1}, {"email": "other", "id": 2}]}
    select = SelectTemplate("users[?lower(email)=='{email|lower}'] | [0].id")

    assert search(select.compiled(Context(value)), document) == 1


@given(ANY_TEXT)
def test_soql_filter_escapes_backslash_and_quote(value: str) -> None:
    text = TextTemplate("Email = '{email|soql}'").fill(Context(value))

    assert text is not None
    inner = text.removeprefix("Email = '").removesuffix("'")
    # Reading the literal as SOQL does: a backslash escapes the next character; a bare
    # quote would end the literal early.
    read, escaped = [], False
    for char in inner:
        if escaped:
            read.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            assert char != "'", "a bare quote ends the literal"
            read.append(char)
    assert not escaped and "".join(read) == value


def test_unknown_braces_outside_steps_are_literal_text() -> None:
    url = UrlTemplate("https://x.example/c?email={email}&fmt={json}")
    filled = url.fill(Context("a@b.c"))
    assert filled is not None and parse_qs(filled.query_string) == {
        "email": ["a@b.c"],
        "fmt": ["{json}"],
    }
    assert SelectTemplate("data[0].{id:id,plan:plan.name}").compiled(Context("a@b.c"))


def test_paths_read_the_first_selection_and_keep_json_types_in_a_body() -> None:
    context = Context("a@b.c", selected={"id": 42, "tags": ["x"], "props": {"hs": "7"}})
    body = BodyTemplate(
        {"id": "{id}", "tags": "{tags}", "text": "c-{id}", "hs": "{props.hs}"}, paths=True
    )

    assert body.fill(context) == {"id": 42, "tags": ["x"], "text": "c-42", "hs": "7"}


def test_a_missing_path_value_makes_the_template_unfillable() -> None:
    context = Context("a@b.c", selected={"id": 1})
    assert UrlTemplate("https://x.example/{owner.id}", paths=True).fill(context) is None
    with pytest.raises(LookupError):
        BodyTemplate({"o": "{owner.id}"}, paths=True).fill(context)


def test_instance_url_starts_the_url() -> None:
    url = UrlTemplate(
        "{instance_url}/services/data/v62.0/query?q=SELECT Id WHERE Email = '{email|soql}'"
    )
    filled = url.fill(Context("o'b@x.com", instance_url="https://acme.my.salesforce.com"))

    assert filled is not None
    assert filled.host == "acme.my.salesforce.com"
    assert filled.query["q"] == "SELECT Id WHERE Email = 'o\\'b@x.com'"
    assert url.fill(Context("o'b@x.com")) is None


def test_as_sent_reads_the_email_as_written() -> None:
    email = Email("ann@example.com", "Ann@Example.com")
    assert TextTemplate("{email|as_sent}/{email}/{email|as_sent|lower}").fill(Context(email)) == (
        "Ann@Example.com/ann@example.com/ann@example.com"
    )
