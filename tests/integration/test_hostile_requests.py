"""Unauthenticated hostile requests to ``POST /preview`` and ``POST /webhooks/stripe``.

Every answer must be a 4xx (or 2xx) with a JSON body, never a 5xx: crafted malformed
bodies first, then raw-socket fuzzing with hypothesis. Stripe's signature scheme
(``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<payload>">``) is from
https://docs.stripe.com/webhooks#verify-manually; multipart bodies follow RFC 7578.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from aggregator.config import Settings
from aggregator.logs import TextFormatter
from tests.support.chaos import ChaosUpstream
from tests.support.proxy import TOKEN, running_proxy, settings_from
from tests.support.raw_http import ThreadedApp, body_of, status_of
from tests.support.upstreams import FakeCrm

SECRET = "whsec_fuzz_secret_0123456789"


def sign(payload: bytes, secret: str = SECRET) -> str:
    """The Stripe-Signature header Stripe would send with ``payload``."""
    timestamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def post(path: str, content_type: bytes | None, body: bytes, *headers: bytes) -> bytes:
    """A raw HTTP/1.1 POST with a correct Content-Length."""
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type)
    lines += [*headers, b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.fixture(scope="module")
def app() -> Iterator[ThreadedApp]:
    """One proxy (a healthy CRM, Stripe webhooks on) for every example of this module."""
    upstream = ChaosUpstream()

    async def build() -> Settings:
        await upstream.start()
        crm = {"type": "rest", "url": upstream.template, "select": "data[0]"}
        return settings_from({"crm": crm}, webhooks={"stripe_secret": SECRET})

    server = ThreadedApp()
    server.start(build)
    try:
        yield server
    finally:
        server.stop(upstream.close)


def answer(app: ThreadedApp, request: bytes) -> tuple[int | None, dict[str, Any]]:
    raw = app.exchange(request)
    status = status_of(raw)
    return status, orjson.loads(body_of(raw)) if status is not None else {}


# -- crafted bodies ----------------------------------------------------------------------

FORM = b"email=ada%40example.com&api_token=" + TOKEN.encode()
MALFORMED_PREVIEWS = {
    "multipart without a boundary": (b"multipart/form-data", FORM),
    "multipart part without headers": (
        b"multipart/form-data; boundary=XX",
        b"--XX\r\nbroken\r\n\r\n--XX--\r\n",
    ),
    "multipart without its boundary": (b"multipart/form-data; boundary=XX", b"garbage"),
    "multipart part in an unknown charset": (
        b"multipart/form-data; boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="email"\r\n'
        b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nada@example.com\r\n--XX--\r\n",
    ),
    "urlencoded latin-1 bytes": (b"application/x-www-form-urlencoded", FORM + b"&x=\xe9"),
    "urlencoded bad percent escape": (b"application/x-www-form-urlencoded", FORM + b"&x=%e9"),
    "urlencoded unknown charset": (b"application/x-www-form-urlencoded; charset=nope", FORM),
    "urlencoded non-text charset": (b"application/x-www-form-urlencoded; charset=base64", FORM),
    "urlencoded utf-16 charset": (b"application/x-www-form-urlencoded; charset=utf-16", FORM),
    "urlencoded, too many fields": (b"application/x-www-form-urlencoded", FORM + b"&a=" * 500),
    "JSON that is a list": (b"application/json", b'["ada@example.com"]'),
    "JSON in latin-1": (b"application/json", b'{"email": "\xe9@example.com"}'),
    "JSON nested 2,000 deep": (b"application/json", b'{"a":' * 2000 + b"1" + b"}" * 2000),
}


@pytest.mark.parametrize("case", list(MALFORMED_PREVIEWS))
def test_a_malformed_preview_body_is_a_400_with_a_reason(app: ThreadedApp, case: str) -> None:
    content_type, body = MALFORMED_PREVIEWS[case]
    status, answered = answer(app, post("/preview", content_type, body))
    assert status == 400, answered
    assert answered["error"]


def test_a_urlencoded_form_in_a_declared_charset_is_read(app: ThreadedApp) -> None:
    body = b"email=ada%40example.com&template=%E9t%E9&api_token=" + TOKEN.encode()
    kind = b"application/x-www-form-urlencoded; charset=latin-1"
    status, answered = answer(app, post("/preview", kind, body))
    assert status == 200, answered
    assert answered["rendered_html"] == "été"


def test_a_non_ascii_stripe_signature_is_a_400(app: ThreadedApp) -> None:
    header = "Stripe-Signature: t=1,v1=é".encode("latin-1")
    status, answered = answer(app, post("/webhooks/stripe", b"application/json", b"{}", header))
    assert status == 400
    assert "Stripe-Signature" in answered["error"]


def customer_event(obj: Any = None) -> dict[str, Any]:
    obj = {"object": "customer", "id": "cus_1", "email": "ada@example.com"} if obj is None else obj
    return {"id": "evt_1", "object": "event", "type": "customer.updated", "data": {"object": obj}}


def deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


ODD_EVENTS: dict[str, bytes] = {
    "a JSON list": b'[{"type": "customer.updated"}]',
    "a JSON string": b'"customer.updated"',
    "a JSON number": b"7",
    "not JSON": b"type=customer.updated",
    "an object 2,000 deep": b'{"type": "customer.updated", "data": {"object": '
    + deep(2000)
    + b"}}",
    "type not a string": orjson.dumps({**customer_event(), "type": ["customer.updated"]}),
    "type null": orjson.dumps({**customer_event(), "type": None}),
    "no data": orjson.dumps({"type": "customer.updated"}),
    "data a list": orjson.dumps({"type": "customer.updated", "data": [1]}),
    "object a string": orjson.dumps(customer_event("cus_1")),
    "billing_details a string": orjson.dumps(
        customer_event({"object": "charge", "billing_details": "ada@example.com"})
    ),
    "previous_attributes a list": orjson.dumps(
        {
            "type": "customer.updated",
            "data": {"object": {"object": "customer"}, "previous_attributes": ["email"]},
        }
    ),
    "customer a number": orjson.dumps(customer_event({"object": "charge", "customer": 17})),
}


@pytest.mark.parametrize("case", list(ODD_EVENTS))
def test_a_signed_event_of_the_wrong_shape_is_a_400(app: ThreadedApp, case: str) -> None:
    payload = ODD_EVENTS[case]
    header = b"Stripe-Signature: " + sign(payload).encode()
    status, answered = answer(app, post("/webhooks/stripe", b"application/json", payload, header))
    assert status == 400, answered
    assert answered["error"].startswith("not a Stripe event")


def test_a_signed_event_nested_a_few_hundred_deep_is_still_read(app: ThreadedApp) -> None:
    payload = (
        b'{"type": "customer.updated", "data": {"object": '
        b'{"object": "customer", "id": "cus_1", "metadata": ' + deep(500) + b"}}}"
    )
    header = b"Stripe-Signature: " + sign(payload).encode()
    status, answered = answer(app, post("/webhooks/stripe", b"application/json", payload, header))
    assert status == 200, answered
    assert answered["received"] is True


# -- fuzzing ---------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
liquid = st.sampled_from(
    [
        "{{ crm_tier }}",
        "{% for i in (1..100000) %}x{% endfor %}",
        '{% assign s = "ab" %}{% for i in (1..40) %}{% assign s = s | append: s %}{% endfor %}',
        "{% if %}",
        "{{ name | upcase }}",
        "{% capture c %}{{ crm_letters }}{% endcapture %}{{ c }}",
    ]
)
charsets = st.sampled_from(
    ["", "; charset=utf-8", "; charset=latin-1", "; charset=utf-16", "; charset=nope", "; charset="]
)


header_bytes = st.binary(max_size=40).map(
    lambda raw: bytes(b for b in raw if b >= 0x20 and b != 0x7F).strip()
)


@st.composite
def field_values(draw: st.DrawFn) -> dict[str, str]:
    """Form fields, usually with the right token and a plausible email."""
    fields: dict[str, str] = {}
    if draw(st.integers(0, 9)) < 7:
        fields["api_token"] = TOKEN
    if draw(st.integers(0, 9)) < 8:
        fields["email"] = draw(st.emails() | texts | st.just("ada@example.com"))
    if draw(st.booleans()):
        fields["template"] = draw(liquid | texts)
    fields.update(draw(st.dictionaries(texts, texts, max_size=3)))
    return fields


def urlencoded(fields: dict[str, str], charset: str, noise: bytes) -> bytes:
    try:
        encoding = charset.partition("=")[2] or "utf-8"
        body = urlencode(fields, encoding=encoding, errors="replace").encode("ascii")
    except LookupError:
        body = urlencode(fields).encode("ascii")
    return body + noise


def multipart(fields: dict[str, str], boundary: str, noise: bytes, broken: bool) -> bytes:
    parts = []
    for name, value in fields.items():
        disposition = f'Content-Disposition: form-data; name="{name}"'.encode(errors="replace")
        head = b"broken" if broken else disposition
        parts.append(f"--{boundary}\r\n".encode() + head + b"\r\n\r\n" + value.encode() + b"\r\n")
    return b"".join(parts) + noise + f"--{boundary}--\r\n".encode()


@st.composite
def preview_requests(draw: st.DrawFn) -> bytes:
    """A POST /preview: JSON, urlencoded, multipart or raw bytes, sometimes malformed."""
    fields = draw(field_values())
    noise = draw(st.binary(max_size=40)) if draw(st.integers(0, 3)) == 0 else b""
    shape = draw(st.sampled_from(["json", "urlencoded", "multipart", "raw"]))
    if shape == "json":
        value: Any = fields if draw(st.integers(0, 4)) else draw(st.lists(texts, max_size=3))
        return post("/preview", b"application/json", orjson.dumps(value) + noise)
    if shape == "urlencoded":
        charset = draw(charsets)
        kind = b"application/x-www-form-urlencoded" + charset.encode()
        return post("/preview", kind, urlencoded(fields, charset, noise))
    if shape == "multipart":
        boundary = draw(st.sampled_from(["XyZ", "", "a b", "--"]))
        kind = b"multipart/form-data" + (f"; boundary={boundary}".encode() if boundary else b"")
        body = multipart(fields, boundary or "XyZ", noise, draw(st.integers(0, 4)) == 0)
        return post("/preview", kind, body)
    raw_kind = draw(st.none() | header_bytes)
    return post("/preview", raw_kind, draw(st.binary(max_size=300)))


@settings(parent=FUZZ)
@given(request=preview_requests())
def test_fuzzed_preview_posts_never_get_a_5xx(app: ThreadedApp, request: bytes) -> None:
    raw = app.exchange(request)
    status = status_of(raw)
    event(f"status {status}")
    assert status is not None and status < 500, (status, request[:300])
    assert isinstance(orjson.loads(body_of(raw)), dict), raw[:300]


# Any value HTTP allows in a header (visible ASCII, space, obs-text); malformed HTTP itself
# is the server's business, not the route's.
signature_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=120,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=15,
)


def mostly(usual: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` four times in five, any JSON value else."""
    return st.integers(0, 4).flatmap(lambda n: json_values if n == 0 else usual)


objects = st.fixed_dictionaries(
    {},
    optional={
        "object": mostly(st.sampled_from(["customer", "charge", "invoice", "subscription"])),
        "id": mostly(st.just("cus_1")),
        "email": mostly(st.just("ada@example.com")),
        "customer": mostly(st.just("cus_1")),
        "customer_email": mostly(st.emails()),
        "receipt_email": mostly(st.emails()),
        "billing_details": mostly(st.fixed_dictionaries({"email": st.emails()})),
    },
)
event_types = st.sampled_from(
    ["customer.updated", "charge.succeeded", "invoice.paid", "customer.subscription.deleted"]
)


@st.composite
def events(draw: st.DrawFn) -> bytes:
    """An event-like payload: Stripe's shape, each part of it replaced one time in six."""

    def part(usual: st.SearchStrategy[Any]) -> Any:
        return draw(json_values) if draw(st.integers(0, 5)) == 0 else draw(usual)

    data: dict[str, Any] = {"object": part(objects)}
    if draw(st.booleans()):
        data["previous_attributes"] = part(st.fixed_dictionaries({"email": st.emails()}))
    return orjson.dumps(part(st.fixed_dictionaries({"type": event_types, "data": st.just(data)})))


@st.composite
def webhook_requests(draw: st.DrawFn) -> bytes:
    """A POST /webhooks/stripe, validly signed two times in three."""
    payload = draw(events()) if draw(st.integers(0, 4)) else draw(st.binary(max_size=200))
    signed = draw(st.integers(0, 2)) > 0
    header = sign(payload) if signed else draw(signature_values)
    return post(
        "/webhooks/stripe",
        b"application/json",
        payload,
        b"Stripe-Signature: " + header.encode("latin-1"),
    )


@settings(parent=FUZZ)
@given(request=webhook_requests())
def test_fuzzed_stripe_webhooks_never_get_a_5xx(app: ThreadedApp, request: bytes) -> None:
    raw = app.exchange(request)
    status = status_of(raw)
    event(f"status {status}")
    assert status is not None and status < 500, (status, request[:300])
    assert isinstance(orjson.loads(body_of(raw)), dict), raw[:300]


# -- the access log ----------------------------------------------------------------------


async def test_the_access_log_holds_no_forged_field_and_no_token_from_an_email(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_from({}, server={"access_log": True})
    caplog.set_level(logging.INFO, logger="aggregator")
    async with running_proxy(settings) as proxy:
        forged = {"X-Request-Id": "x status=200 email=ceo@example.com"}
        params = {"email": f"a@b.co;api_token={TOKEN}", "api_token": TOKEN}
        async with proxy.session.get(f"{proxy.url}/profile", params=params, headers=forged):
            pass
        async with proxy.session.get(
            f"{proxy.url}/healthz", headers={"X-Request-Id": "lb-7f3a.42"}
        ):
            pass
    lines = [TextFormatter().format(r) for r in caplog.records if r.name == "aggregator.request"]
    assert len(lines) == 2, lines
    assert TOKEN not in "\n".join(lines)
    assert "status=200 email=ceo" not in lines[0]
    assert "email=a***@***" in lines[0]
    assert "request_id=lb-7f3a.42" in lines[1]


# -- lookalike emails ------------------------------------------------------------------------


async def test_a_kelvin_sign_never_reaches_another_customers_profile(crm: FakeCrm) -> None:
    crm.contacts["kate@example.com"] = {"plan": {"name": "Enterprise"}}
    settings = settings_from({"crm": {"type": "rest", "url": crm.template, "select": "data[0]"}})
    async with running_proxy(settings) as proxy:
        status_kate, kate = await proxy.profile("Kate@example.com")
        status, body = await proxy.profile("\u212aate@example.com")
    assert status_kate == 200
    assert kate["crm_plan_name"] == "Enterprise"
    assert status == 400
    assert "normal form" in body["error"]
    assert list(crm.calls) == ["kate@example.com"]
