"""The ``rest`` connector: JSON HTTP APIs (CRMs, billing, help desks) looked up by email.

One first call (``url``, ``method``, ``headers``, ``body``, ``auth``) whose answer is
checked (``errors``), narrowed (``select``), picked from (``fields``) and shown
(``formats``, see ``aggregator.formats``); then optional ``then`` steps, run concurrently
and fed by the first selection, each landing under its own name (with formats of its
own); and an optional ``link`` to the record (``<prefix>_url``). Placeholders are
described in ``connectors.templating``: the email is always data, never structure.

Presets (HubSpot, Salesforce, ...) are subclasses of ``RestBase`` that build a
``RestSettings`` from a few keys and may polish the result in ``_finish``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import aiohttp
import orjson
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from yarl import URL

from aggregator.errors import (
    ConnectorError,
    FatalError,
    NotFoundError,
    RetriableError,
    UnavailableError,
)
from aggregator.formats import FieldFormat, apply_formats, parse_formats
from aggregator.privacy import mask_email
from connectors.auth import Authenticator, Credentials
from connectors.base import Answer, Connector, ConnectorSettings, SettingsT, Status, StepOutcome
from connectors.http import Reply, exchange, parse_retry_after
from connectors.rest_settings import RestSettings, StepSettings
from connectors.templating import (
    BodyTemplate,
    Context,
    SelectTemplate,
    TextTemplate,
    UrlTemplate,
    compile_jmespath,
    search,
)

__all__ = ["RestBase", "RestConnector", "RestSettings", "StepSettings", "parse_retry_after"]

log = logging.getLogger("aggregator.connector.rest")

PROBE_EMAIL = "aggregator-check@example.invalid"
STEP_MARGIN = 0.02
"""Seconds kept between the steps' deadline and the fetch's, to return the first call's fields."""
_EMAILISH = re.compile(r"[^\s@\"'<>(),;:]+@[^\s@\"'<>(),;:]+")
_MAX_MESSAGE = 200


@dataclass(frozen=True, slots=True)
class _Call:
    """A compiled request: what to send, and how to read what comes back."""

    method: str
    url: UrlTemplate
    body: BodyTemplate | None
    email_body: bool = False


@dataclass(frozen=True, slots=True)
class _Lookup:
    """A first call and how to read its answer: select, fields, link."""

    call: _Call
    select: SelectTemplate | None
    fields: dict[str, ParsedResult]
    link: UrlTemplate | None

    @classmethod
    def of(cls, spec: RestSettings) -> _Lookup:
        """Compile the first-call keys of ``spec``."""
        body = None if spec.body is None else BodyTemplate(spec.body)
        email_body = spec.method == "POST" and spec.body is None
        return cls(
            _Call(spec.method, UrlTemplate(spec.url), body, email_body),
            SelectTemplate(spec.select) if spec.select else None,
            {k: compile_jmespath(v) for k, v in (spec.fields or {}).items()},
            UrlTemplate(spec.link, paths=True) if spec.link else None,
        )


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    call: _Call
    select: SelectTemplate | None
    fields: dict[str, ParsedResult]
    max_items: int | None
    count: ParsedResult | None
    formats: dict[str, FieldFormat]


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == []


def _formatted_object(value: Any, formats: Mapping[str, FieldFormat]) -> Any:
    """An object with its formatted fields shown; anything else as it is."""
    return apply_formats(value, formats) if formats and isinstance(value, dict) else value


class RestBase(Connector[SettingsT]):
    """The rest machinery; a subclass says what to call through ``rest_settings()``.

    - Statuses in ``not_found_statuses`` (404) and an empty selection (null, {}, []) mean an
      unknown customer. 429, 408 and 5xx are retriable (``Retry-After`` honoured, as seconds
      or an HTTP date); other 4xx, 3xx (redirects are not followed, so headers and tokens
      never leave the configured host), a body that is not JSON or larger than
      ``max_body_bytes``, and a non-empty ``errors`` match are fatal.
    - A 401 with an OAuth2 token fetches a new token and retries once.
    - Without ``fields`` the selected value must be a JSON object (else fatal). With
      ``fields`` each expression runs on the selected value whatever its type; names whose
      value is null are left out.
    - ``formats`` apply to the top-level fields once everything else is done (presets'
      ``_finish`` included); a step's ``formats`` to its fields, or to each object it
      selected, before its items are numbered.
    - ``then`` steps run concurrently inside the fetch's deadline; a failing step adds
      ``<step>_error`` (timeout, unavailable or error) and the first call's fields stay.
    - Timeouts, retries of the first call and the circuit breaker are the base class's job.
    """

    def __init__(self, name: str, settings: SettingsT) -> None:
        super().__init__(name, settings)
        spec = self.rest_settings()
        self.spec = spec
        self.auth = Authenticator(spec.auth)
        self._headers = {
            key: TextTemplate(value)
            for key, value in {"Accept": "application/json", **spec.headers}.items()
        }
        self._lookups = [_Lookup.of(spec), *(_Lookup.of(f) for f in self.fallback_settings())]
        self._errors = compile_jmespath(spec.errors) if spec.errors else None
        self._steps = [self._compile_step(n, s) for n, s in (spec.then or {}).items()]
        self._formats = parse_formats(spec.formats)
        self._not_found = frozenset(spec.not_found_statuses)
        self._session: aiohttp.ClientSession | None = None

    def rest_settings(self) -> RestSettings:
        """The rest settings this connector runs (a preset builds them from its keys)."""
        raise NotImplementedError

    def fallback_settings(self) -> list[RestSettings]:
        """Further first calls, tried in order while the customer is not found.

        Only their url, method, body, select, fields and link are used; headers, auth,
        errors and steps are the main settings'. (Salesforce: Contact, then Lead.)
        """
        return []

    @staticmethod
    def _compile_step(name: str, step: StepSettings) -> _Step:
        body = None if step.body is None else BodyTemplate(step.body, paths=True)
        return _Step(
            name,
            _Call(step.method, UrlTemplate(step.url, paths=True), body),
            SelectTemplate(step.select) if step.select else None,
            {k: compile_jmespath(v) for k, v in (step.fields or {}).items()},
            step.max_items,
            compile_jmespath(step.count) if step.count else None,
            parse_formats(step.formats),
        )

    async def open(self, session: aiohttp.ClientSession) -> None:
        """Use the app's shared HTTP session (it is not closed by ``close``)."""
        self._session = session

    async def close(self) -> None:
        """Forget the shared session; its owner closes it."""
        self._session = None

    def request_url(self, email: str) -> URL:
        """The first call's URL for one email (auth's query parameter not included)."""
        url = self._lookups[0].call.url.fill(Context(email, "https://instance.invalid"))
        assert url is not None
        return url

    def declared_shape(self) -> Mapping[str, Any] | None:
        """The keys ``fields``, ``link`` and steps with ``fields`` will produce."""
        lookup = self._lookups[0]
        if not lookup.fields:
            return None
        shape: dict[str, Any] = dict.fromkeys(lookup.fields)
        if lookup.link is not None:
            shape["url"] = None
        for step in self._steps:
            if step.fields:
                shape[step.name] = dict.fromkeys(step.fields)
        return shape

    # -- probing -------------------------------------------------------------------

    async def check(self) -> None:
        """Get a token (OAuth2), then probe with an unknown email; name the failing piece."""
        session = self._require_session()
        if self.auth.tokens is not None:
            try:
                await self.auth.tokens.get(session)
            except RetriableError as exc:
                raise RetriableError(f"auth (oauth2): {exc}") from exc
            except ConnectorError as exc:
                raise FatalError(f"auth (oauth2): {exc}") from exc
        lookup = self._lookups[0]
        sent = await self._send(lookup.call, Context(PROBE_EMAIL))
        assert sent is not None
        reply, context = sent
        status = reply.status
        if status in (401, 403):
            raise FatalError(
                f"auth ({self.auth.kind}): HTTP {status}: the upstream refused the credentials"
            )
        if status >= 500:
            raise RetriableError(f"HTTP {status}: the upstream is failing")
        if 300 <= status < 400:
            raise FatalError(f"HTTP {status}: redirects are not followed; set the final url")
        if reply.body is not None:
            document = self._decode(reply)
            self._check_errors(document)
            self._pick(lookup, self._selected(lookup, document, context))

    # -- fetching ------------------------------------------------------------------

    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        for lookup in self._lookups:
            found = await self._look_up(lookup, email)
            if found is not None:
                break
        else:
            return None
        fields, context = found
        steps: dict[str, StepOutcome] = {}
        if self._steps:
            values, steps = await self._run_steps(context)
            fields.update(values)
        fields = self._formatted(await self._finish(fields, context))
        return Answer(fields, steps) if steps else fields

    async def _look_up(self, lookup: _Lookup, email: str) -> tuple[dict[str, Any], Context] | None:
        """One first call: its fields (with the link) and the context steps are fed from."""
        sent = await self._send(lookup.call, Context(email))
        assert sent is not None, "the first call's placeholders always have values"
        reply, context = sent
        document = self._document(reply)
        if document is None:
            return None
        selected = self._selected(lookup, document, context)
        fields = self._pick(lookup, selected)
        if fields is None:
            return None
        context = replace(context, selected=selected)
        if lookup.link is not None:
            link = lookup.link.fill(context)
            if link is not None:
                fields["url"] = str(link)
        return fields, context

    async def _finish(self, fields: dict[str, Any], context: Context) -> dict[str, Any]:
        """Last touches to the fields (presets: money, links); the first selection in context."""
        return fields

    def _formatted(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields shown as ``formats`` says (presets also format their items' fields)."""
        return apply_formats(fields, self._formats) if self._formats else fields

    @staticmethod
    def _selected(lookup: _Lookup, document: Any, context: Context) -> Any:
        select = lookup.select
        try:
            return search(select.compiled(context), document) if select else document
        except JMESPathError as exc:
            raise FatalError(f"JMESPath failed on the answer: {type(exc).__name__}") from None

    @staticmethod
    def _pick(lookup: _Lookup, selected: Any) -> dict[str, Any] | None:
        if _empty(selected):
            return None
        try:
            if lookup.fields:
                picked = {name: search(expr, selected) for name, expr in lookup.fields.items()}
                return {name: value for name, value in picked.items() if value is not None}
        except JMESPathError as exc:
            raise FatalError(f"JMESPath failed on the answer: {type(exc).__name__}") from None
        if not isinstance(selected, dict):
            raise FatalError(f"the selected value is a {type(selected).__name__}, not an object")
        return dict(selected)

    # -- steps ---------------------------------------------------------------------

    async def _run_steps(self, context: Context) -> tuple[dict[str, Any], dict[str, StepOutcome]]:
        end = self.budget_end()
        deadline = None if end is None else end - STEP_MARGIN
        results = await asyncio.gather(*(self._run_step(s, context, deadline) for s in self._steps))
        values: dict[str, Any] = {}
        outcomes: dict[str, StepOutcome] = {}
        for step, (value, outcome) in zip(self._steps, results, strict=True):
            outcomes[step.name] = outcome
            if outcome.failed:
                values[f"{step.name}_error"] = outcome.status
            elif value is not None:
                values[step.name] = value
        return values, outcomes

    async def _run_step(
        self, step: _Step, context: Context, deadline: float | None
    ) -> tuple[Any, StepOutcome]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if deadline is None:
            deadline = started + self.settings.timeout

        def outcome(status: Status, detail: str = "") -> StepOutcome:
            return StepOutcome(status, loop.time() - started, detail)

        attempts = 0
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    attempts += 1
                    try:
                        await self._pace()
                        value = await self._step_value(step, context)
                    except RetriableError as exc:
                        pause = self._backoff(attempts, exc.retry_after)
                        if attempts <= self.settings.retries and loop.time() + pause < deadline:
                            await asyncio.sleep(pause)
                            continue
                        unreachable = isinstance(exc, UnavailableError)
                        kind: Status = "unavailable" if unreachable else "error"
                        return None, outcome(kind, type(exc).__name__)
                    return value, outcome("not_found" if value is None else "ok")
        except TimeoutError:
            return None, outcome("timeout", "timed out")
        except NotFoundError:
            return None, outcome("not_found")
        except ConnectorError as exc:
            return None, outcome("error", type(exc).__name__)
        except (aiohttp.ClientConnectorError, ConnectionError):
            return None, outcome("unavailable", "unreachable")
        except Exception as exc:
            log.warning("connector %s step %s raised %s", self.name, step.name, type(exc).__name__)
            return None, outcome("error", type(exc).__name__)

    async def _step_value(self, step: _Step, context: Context) -> Any:
        sent = await self._send(step.call, context)
        if sent is None:
            return None
        reply, used = sent
        document = self._document(reply)
        if document is None:
            return None
        try:
            selected = search(step.select.compiled(used), document) if step.select else document
            if step.fields:
                picked = {name: search(expr, selected) for name, expr in step.fields.items()}
                kept = {name: value for name, value in picked.items() if value is not None}
                return _formatted_object(kept, step.formats) or None
            count = search(step.count, document) if step.count else None
        except JMESPathError as exc:
            raise FatalError(f"JMESPath failed on the answer: {type(exc).__name__}") from None
        if isinstance(selected, list):
            shown = [_formatted_object(item, step.formats) for item in selected]
            return self._items(shown, step, count)
        return None if _empty(selected) else _formatted_object(selected, step.formats)

    @staticmethod
    def _items(items: list[Any], step: _Step, count: Any) -> Any:
        """A selected list: as is, or numbered items (``max_items``) plus ``count``."""
        if step.max_items is None and step.count is None:
            return items
        kept = items if step.max_items is None else items[: step.max_items]
        total = count if isinstance(count, int) and not isinstance(count, bool) else len(items)
        if any(isinstance(item, dict | list) for item in kept):
            return {**{str(i): item for i, item in enumerate(kept)}, "count": total}
        return kept if kept else {"count": total}

    # -- one HTTP call -------------------------------------------------------------

    async def _get_json(self, url: str) -> Any:
        """GET a fixed ``url`` with this connector's headers and auth; the decoded answer."""
        sent = await self._send(_Call("GET", UrlTemplate(url), None), Context(""))
        assert sent is not None, "a url without placeholders always has its values"
        document = self._document(sent[0])
        if document is None:
            raise NotFoundError(f"HTTP {sent[0].status}")
        return document

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"connector {self.name} used before open()")
        return self._session

    async def _send(self, call: _Call, context: Context) -> tuple[Reply, Context] | None:
        """Send ``call``; None when a placeholder has no value. A 401 with OAuth2 retries once."""
        session = self._require_session()
        try:
            payload = self._payload(call, context)
        except LookupError:
            return None
        for attempt in (1, 2):
            credentials = await self.auth.credentials(session)
            used = self._with_token(context, credentials)
            url = call.url.fill(used)
            headers = self._request_headers(used)
            if url is None or headers is None:
                return None
            if payload is not None:
                headers["Content-Type"] = "application/json"
            reply = await exchange(
                session,
                call.method,
                credentials.apply(url),
                headers={**headers, **credentials.headers},
                body=payload,
                max_body_bytes=self.spec.max_body_bytes,
                read_body=self._wants_body,
            )
            if reply.status == 401 and attempt == 1 and self.auth.refused(credentials):
                continue
            return reply, used
        raise AssertionError("unreachable")

    def _wants_body(self, status: int) -> bool:
        return 200 <= status < 300 and status not in self._not_found

    @staticmethod
    def _with_token(context: Context, credentials: Credentials) -> Context:
        token = credentials.token
        if token is None or token.instance_url == context.instance_url:
            return context
        return replace(context, instance_url=token.instance_url)

    @staticmethod
    def _payload(call: _Call, context: Context) -> bytes | None:
        """The JSON body; LookupError when a placeholder has no value."""
        if call.email_body:
            return json.dumps({"email": str(context.email)}).encode()
        if call.body is None:
            return None
        return orjson.dumps(call.body.fill(context))

    def _request_headers(self, context: Context) -> dict[str, str] | None:
        headers: dict[str, str] = {}
        for name, template in self._headers.items():
            text = template.fill(context)
            if text is None:
                return None
            if any(c in text for c in "\r\n\x00"):
                raise FatalError(f"header {name}: a filled value holds a line break")
            headers[name] = text
        return headers

    def _document(self, reply: Reply) -> Any:
        """The decoded 2xx answer; None for a not-found status; raises for the rest."""
        status = reply.status
        if status in self._not_found:
            return None
        if status == 429 or status == 408 or status >= 500:
            raise RetriableError(f"HTTP {status}", retry_after=self._retry_after(reply))
        if 300 <= status < 400:
            raise FatalError(f"HTTP {status}: redirects are not followed")
        if reply.body is None:
            raise FatalError(f"HTTP {status}")
        document = self._decode(reply)
        self._check_errors(document)
        return document

    def _retry_after(self, reply: Reply) -> float | None:
        """Seconds the upstream asked to wait (``Retry-After``); presets read their own."""
        return parse_retry_after(reply.headers.get("Retry-After"))

    @staticmethod
    def _decode(reply: Reply) -> Any:
        try:
            return orjson.loads(reply.body or b"")
        except orjson.JSONDecodeError:
            raise FatalError("the answer is not JSON") from None

    def _check_errors(self, document: Any) -> None:
        if self._errors is None:
            return
        try:
            found = search(self._errors, document)
        except JMESPathError as exc:
            raise FatalError(f"JMESPath failed on the answer: {type(exc).__name__}") from None
        if found is None or found is False or found == "" or found == [] or found == {}:
            return
        raise self._upstream_error(document, found)

    def _upstream_error(self, document: Any, found: Any) -> ConnectorError:
        """The error for a non-empty ``errors`` match; its message goes to the log, masked."""
        log.warning(
            "connector %s: the upstream reported an error: %s", self.name, error_message(found)
        )
        return FatalError("the upstream reported an error")


def error_message(found: Any) -> str:
    """A short, masked message from an ``errors`` match (emails masked, length capped)."""
    first = found[0] if isinstance(found, list) and found else found
    if isinstance(first, dict):
        first = first.get("message") or first.get("msg") or first.get("error") or "error"
    text = first if isinstance(first, str) else json.dumps(first, default=str)[:_MAX_MESSAGE]
    text = _EMAILISH.sub(lambda m: mask_email(m.group(0)), text)
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:_MAX_MESSAGE] + ("..." if len(text) > _MAX_MESSAGE else "")


class RestConnector(RestBase[RestSettings]):
    """``type: rest``: the keys in the config are the plan."""

    settings_model: ClassVar[type[ConnectorSettings]] = RestSettings

    def rest_settings(self) -> RestSettings:
        """The configured settings themselves."""
        return self.settings
