"""The preview page: an email and a Liquid template in, the sidebar as Groove renders it out.

``GET /preview?api_token=T`` serves the page; its form posts to ``POST /preview`` (the token
in a hidden field), which fetches the profile bypassing the cache and answers JSON:
``{email, profile, rendered_html, template_error, connectors, cache_state, cached}``.
"""

from __future__ import annotations

import html
import re
import secrets
import time
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from liquid.exceptions import LiquidError

from aggregator.cache import CacheEntry
from aggregator.emails import InvalidEmail, parse_email
from aggregator.groove import render_sidebar
from aggregator.handlers import JSON, json_error, token_matches
from aggregator.keys import SERVICE
from aggregator.service import ProfileAnswer

MAX_TEMPLATE_CHARS = 65_536
MAX_FORM_FIELDS = 100
MAX_EMAIL_CHARS = 320
_PLACEHOLDER = re.compile(r"__(NONCE|TOKEN|EMAIL|TEMPLATE)__")
_STATIC = files("aggregator") / "static"


@cache
def sample_template() -> str:
    """The Groove template shipped with the package (examples/groove-template.liquid links here)."""
    return (_STATIC / "groove-template.liquid").read_text(encoding="utf-8")


@cache
def _page_source() -> str:
    return (_STATIC / "preview.html").read_text(encoding="utf-8")


def _headers(nonce: str) -> dict[str, str]:
    # srcdoc frames inherit this policy: the sidebar may use inline styles and data: images,
    # and can load nothing from elsewhere; sandbox="" already stops its scripts.
    policy = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; "
        "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


async def page(request: web.Request) -> web.Response:
    """GET /preview?api_token=T[&email=E]: the HTML page (401 JSON without a valid token).

    With ``email`` the form is filled in and the page runs it at once (a deep link).
    """
    query = request.rel_url.query
    token = query.get("api_token")
    if not token_matches(token, request.app[SERVICE].runtime.tokens):
        return json_error(401, "missing or invalid api_token")
    assert token is not None
    nonce = secrets.token_urlsafe(16)
    values = {
        "NONCE": nonce,
        "TOKEN": html.escape(token),
        "EMAIL": html.escape(query.get("email", "")[:MAX_EMAIL_CHARS]),
        "TEMPLATE": html.escape(sample_template()),
    }
    # One pass over the page's own text: a value is never searched for placeholders again.
    body = _PLACEHOLDER.sub(lambda match: values[match.group(1)], _page_source())
    return web.Response(
        text=body, content_type="text/html", charset="utf-8", headers=_headers(nonce)
    )


class BadForm(ValueError):
    """The body of ``POST /preview`` cannot be read; the message says why (a 400)."""


async def _form(request: web.Request) -> dict[str, str]:
    """The posted fields: JSON, urlencoded or multipart; BadForm when the body is unreadable.

    Any other content type posts no fields (the token may then come in the query).
    """
    kind = request.content_type
    if kind == "application/json":
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise BadForm("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadForm("the body is not a JSON object")
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
    if kind == "application/x-www-form-urlencoded":
        return _urlencoded(await request.read(), request.charset or "utf-8")
    if kind == "multipart/form-data":
        try:
            posted = await request.post()
        except web.HTTPException:
            raise  # 413 for a body over client_max_size
        except Exception as exc:
            # aiohttp's multipart reader raises many types for a malformed body (ValueError,
            # LookupError, HttpProcessingError, AssertionError...); all of them mean bad input.
            raise BadForm(f"the multipart body is malformed ({type(exc).__name__})") from None
        return {k: v for k, v in posted.items() if isinstance(v, str)}
    return {}


def _urlencoded(body: bytes, charset: str) -> dict[str, str]:
    try:
        text = body.decode(charset)
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            encoding=charset,
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except LookupError:
        raise BadForm("the form's charset is not one this proxy knows") from None
    except ValueError:  # UnicodeDecodeError, or more than MAX_FORM_FIELDS fields
        raise BadForm(f"the form is not valid {charset} (or has too many fields)") from None
    return dict(pairs)


async def api(request: web.Request) -> web.Response:
    """POST /preview (email, template, api_token): profile, render, per-connector data."""
    try:
        form = await _form(request)
    except BadForm as exc:
        return json_error(400, str(exc))
    token = form.get("api_token", request.rel_url.query.get("api_token"))
    if not token_matches(token, request.app[SERVICE].runtime.tokens):
        return json_error(401, "missing or invalid api_token")
    try:
        email = parse_email(form.get("email"))
    except InvalidEmail as exc:
        return json_error(400, str(exc))
    template = form.get("template", sample_template())
    if len(template) > MAX_TEMPLATE_CHARS:
        return json_error(400, f"the template is longer than {MAX_TEMPLATE_CHARS} characters")
    service = request.app[SERVICE]
    now = time.time()
    entry = await service.store.get(email, now)
    answer = await service.preview(email)
    profile = answer.profile or {}
    rendered: str | None = None
    template_error: str | None = None
    try:
        rendered = render_sidebar(template, profile, email)
    except LiquidError as exc:
        template_error = str(exc)
    cached: dict[str, Any] = {"state": "none", "fetched_at": None}
    if entry is not None:
        cached = {
            "state": "fresh" if now < entry.fresh_until else "stale",
            "fetched_at": _iso(entry.fetched_at),
        }
    body = {
        "email": email,
        "profile": profile,
        "rendered_html": rendered,
        "template_error": template_error,
        "connectors": _connectors(answer, entry, now),
        "cache_state": answer.cache,
        "cached": cached,
    }
    return web.Response(
        body=orjson.dumps(body), content_type=JSON, headers={"Cache-Control": "no-store"}
    )


def _connectors(
    answer: ProfileAnswer, entry: CacheEntry | None, now: float
) -> list[dict[str, Any]]:
    rows = []
    for outcome in answer.outcomes:
        snapshot = entry.sources.get(outcome.name) if entry is not None else None
        cache_row: dict[str, Any] | None = None
        if entry is not None and snapshot is not None:
            cache_row = {
                "state": "fresh" if now < entry.fresh_until else "stale",
                "status": snapshot.status,
                "age_s": round(max(0.0, now - snapshot.fetched_at), 1),
            }
        rows.append(
            {
                "name": outcome.name,
                "status": outcome.status,
                "elapsed_ms": round(outcome.elapsed * 1000, 1),
                "attempts": outcome.attempts,
                "detail": outcome.detail,
                "keys": answer.contributed.get(outcome.name, []),
                "cache": cache_row,
                "steps": [
                    {
                        "name": step,
                        "status": result.status,
                        "elapsed_ms": round(result.elapsed * 1000, 1),
                        "detail": result.detail,
                    }
                    for step, result in outcome.steps.items()
                ],
            }
        )
    return rows


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
