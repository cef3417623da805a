"""Log formats: plain text with key=value extras, or one JSON object per line."""

from __future__ import annotations

import logging
import re

import orjson

from aggregator.logs import JsonFormatter, MalformedRequestRedactor, TextFormatter, request_id
from aggregator.privacy import mask_email


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("aggregator.request", logging.INFO, __file__, 1, "request", None, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_request_fields() -> None:
    line = JsonFormatter().format(
        record(request_id="abc", status=200, cache="hit", connectors={"crm": "ok"})
    )
    data = orjson.loads(line)
    assert data["message"] == "request"
    assert data["request_id"] == "abc"
    assert data["status"] == 200
    assert data["connectors"] == {"crm": "ok"}
    assert data["level"] == "INFO"


def test_text_lines_append_extras() -> None:
    line = TextFormatter().format(record(request_id="abc", connectors={"crm": "timeout"}))
    assert line.endswith("request request_id=abc connectors=crm:timeout")


def test_malformed_request_records_lose_their_raw_line() -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    try:
        raise BadHttpMessage("bad line GET /profile?api_token=secret&email=ada@example.com")
    except BadHttpMessage as exc:
        rec = logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            __file__,
            1,
            "Error handling request",
            None,
            (type(exc), exc, exc.__traceback__),
        )
    MalformedRequestRedactor().filter(rec)
    text = TextFormatter().format(rec)
    assert "secret" not in text
    assert "ada@example.com" not in text
    assert "BadHttpMessage" in text


def test_mask_email() -> None:
    assert mask_email("jane@example.com") == "j***@example.com"
    assert mask_email("nonsense") == "***"


def test_mask_email_shows_only_a_host_name_as_the_domain() -> None:
    assert mask_email("a@b.co;api_token=T0KEN") == "a***@***"
    assert mask_email("a@b.co api_token=T0KEN") == "a***@***"
    assert mask_email("a@b.co\r\nX-Forged: 1") == "a***@***"
    assert mask_email("ü@bücher.de") == "ü***@bücher.de"
    assert mask_email("x@mail-1.example.co.uk") == "x***@mail-1.example.co.uk"
    for domain in ("localhost", "-x.com", "x-.com", "x_y.com", "x..com", "x" * 64 + ".com"):
        assert mask_email(f"a@{domain}") == "a***@***", domain
    assert mask_email("\nx@y.com") == "****@y.com"


def test_a_plain_request_id_is_kept_and_anything_else_replaced() -> None:
    for sent in ("abc-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "Root=1-5759e988"):
        assert request_id(sent) == sent
    for forged in ("a b", "x status=200", "a\tb", "é", "", "x" * 129, None):
        new = request_id(forged)
        assert new != forged
        assert re.fullmatch(r"[0-9a-f]{16}", new)
