"""Placeholders in rest templates: filled by data, never by text.

A placeholder is ``{...}`` with no space and no brace inside:

- ``{email}`` is the normalized (lower-cased) email; filters follow a bar:
  ``{email|lower}``, ``{email|as_sent}`` (the address as Groove wrote it), ``{email|soql}``
  (``\\`` and ``'`` backslash-escaped for a SOQL string literal) and ``{email|quoted}``
  (a double-quoted search term, ``"`` and ``\\`` escaped); they chain, ``as_sent`` first.
- ``{instance_url}`` is the API host an OAuth2 token answer named (Salesforce), only at the
  start of a URL.
- In ``then`` steps and ``link`` any other placeholder is a JMESPath on the first call's
  selected object (``{id}``, ``{properties.hs_object_id}``), and takes the same filters.

Elsewhere a brace pair that is not one of these is kept as written, so ``{json}`` in a URL
or a GraphQL selection written with spaces (``{ id }``) is never touched.

In a URL each filled value is percent-encoded with nothing left safe; in a JSON body it
becomes a JSON string (a body string that is exactly one JMESPath placeholder keeps the
value's JSON type); in ``select`` it becomes a JMESPath literal. So no value, whatever it
holds, can change the structure around it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jmespath
from jmespath import functions as jp_functions
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from yarl import URL

from aggregator.emails import as_sent

PLACEHOLDER = re.compile(r"\{([^{}\s]+)\}")
_QUOTED_PLACEHOLDER = re.compile(r"'(\{[^{}\s]+\})'|(\{[^{}\s]+\})")
INSTANCE_URL = "instance_url"
EMAIL = "email"
FILTERS: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "soql": lambda text: text.replace("\\", "\\\\").replace("'", "\\'"),
    "quoted": lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"',
}
AS_SENT = "as_sent"
_STAND_IN = "zqPLACEHOLDER{}x9"
_INSTANCE_BASE = "http://instance-url.invalid"


class _Functions(jp_functions.Functions):
    """JMESPath functions beyond the standard ones."""

    @jp_functions.signature({"types": ["string", "null"]})
    def _func_lower(self, value: str | None) -> str | None:
        return value.lower() if isinstance(value, str) else None


JMESPATH_OPTIONS = jmespath.Options(custom_functions=_Functions())


def compile_jmespath(expression: str) -> ParsedResult:
    """Compile a JMESPath expression; ValueError names it when it is invalid."""
    try:
        return jmespath.compile(expression)
    except JMESPathError as exc:
        raise ValueError(f"invalid JMESPath expression {expression!r}: {exc}") from None


def search(expression: ParsedResult, document: Any) -> Any:
    """Evaluate a compiled expression with this project's functions (``lower()``)."""
    return expression.search(document, options=JMESPATH_OPTIONS)


@dataclass(frozen=True, slots=True)
class Context:
    """What placeholders are filled from: the email, the token's host, the first selection."""

    email: str
    instance_url: str | None = None
    selected: Any = None


@dataclass(frozen=True, slots=True)
class Slot:
    """One placeholder: what it names and the filters applied to its text."""

    source: str
    filters: tuple[str, ...]
    path: ParsedResult | None = None

    def value(self, context: Context) -> Any:
        """The raw value (a JMESPath result keeps its JSON type); None when missing."""
        if self.source == EMAIL:
            return as_sent(context.email) if self.filters[:1] == (AS_SENT,) else context.email
        if self.source == INSTANCE_URL:
            return context.instance_url
        assert self.path is not None
        return search(self.path, context.selected)

    def text(self, context: Context) -> str | None:
        """The filled text, filters applied; None when the value is missing."""
        raw = self.value(context)
        if raw is None:
            return None
        if isinstance(raw, str):
            text = raw
        elif isinstance(raw, bool):
            text = "true" if raw else "false"
        else:
            text = json.dumps(raw, ensure_ascii=False, separators=(",", ":"))
        for name in self.filters:
            if name != AS_SENT:
                text = FILTERS[name](text)
        return text


def parse_slot(inner: str, *, paths: bool) -> Slot | None:
    """The placeholder ``{inner}``, or None when it is literal text (ValueError if broken).

    ``paths`` allows JMESPath placeholders (``then`` steps and ``link``).
    """
    head, *filters = inner.split("|")
    if head not in (EMAIL, INSTANCE_URL) and not paths:
        return None
    for position, name in enumerate(filters):
        if name == AS_SENT and head == EMAIL and position == 0:
            continue
        if name not in FILTERS:
            known = ", ".join(["as_sent (first, {email} only)", *FILTERS])
            raise ValueError(f"{{{inner}}}: unknown filter {name!r} (known: {known})")
    if head == INSTANCE_URL:
        if filters:
            raise ValueError("{instance_url} takes no filters")
        return Slot(INSTANCE_URL, ())
    if head == EMAIL:
        return Slot(EMAIL, tuple(filters))
    return Slot("path", tuple(filters), compile_jmespath(head))


def slots_in(text: str, *, paths: bool) -> list[Slot]:
    """Every placeholder in ``text`` (validated)."""
    found = [parse_slot(match.group(1), paths=paths) for match in PLACEHOLDER.finditer(text)]
    return [slot for slot in found if slot is not None]


class TextTemplate:
    """A string with placeholders filled as plain text (headers)."""

    def __init__(self, text: str, *, paths: bool = False) -> None:
        self.text = text
        self._parts: list[str | Slot] = []
        position = 0
        for match in PLACEHOLDER.finditer(text):
            slot = parse_slot(match.group(1), paths=paths)
            if slot is None:
                continue
            self._parts += [text[position : match.start()], slot]
            position = match.end()
        self._parts.append(text[position:])
        self.slots = [part for part in self._parts if isinstance(part, Slot)]

    def fill(self, context: Context) -> str | None:
        """The text with every placeholder filled; None when a value is missing."""
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            text = part.text(context)
            if text is None:
                return None
            out.append(text)
        return "".join(out)


class UrlTemplate:
    """An http(s) URL whose placeholders become percent-encoded path or query data."""

    def __init__(self, url: str, *, paths: bool = False) -> None:
        self.slots: list[Slot] = []
        self.uses_instance_url = url.startswith("{" + INSTANCE_URL + "}")
        rest = url.removeprefix("{" + INSTANCE_URL + "}") if self.uses_instance_url else url
        if self.uses_instance_url and not rest.startswith("/"):
            raise ValueError("{instance_url} must be followed by a path starting with '/'")

        def stand_in(match: re.Match[str]) -> str:
            slot = parse_slot(match.group(1), paths=paths)
            if slot is None:
                return match.group(0)
            if slot.source == INSTANCE_URL:
                raise ValueError("{instance_url} may only start the url")
            self.slots.append(slot)
            return _STAND_IN.format(len(self.slots) - 1)

        marked = PLACEHOLDER.sub(stand_in, rest)
        parsed = URL(_INSTANCE_BASE + marked if self.uses_instance_url else marked)
        if parsed.scheme not in ("http", "https"):
            raise ValueError("url must start with http:// or https:// (or {instance_url}/...)")
        if not parsed.host:
            raise ValueError("url has no host")
        if "zqplaceholder" in (parsed.raw_authority or "").lower():
            raise ValueError("a placeholder may only appear in the path or the query, not the host")
        self._encoded = str(parsed)
        if self.uses_instance_url:
            self._encoded = self._encoded.removeprefix(_INSTANCE_BASE)

    @property
    def has_email(self) -> bool:
        """True when the URL carries the email (a GET needs it to identify the customer)."""
        return any(slot.source == EMAIL for slot in self.slots)

    def fill(self, context: Context) -> URL | None:
        """The URL for ``context``; None when a placeholder's value is missing."""
        built = self._encoded
        for index, slot in enumerate(self.slots):
            text = slot.text(context)
            if text is None:
                return None
            built = built.replace(_STAND_IN.format(index), quote(text, safe=""), 1)
        if self.uses_instance_url:
            if not context.instance_url:
                return None
            built = context.instance_url + built
        return URL(built, encoded=True)


def _json_value(template: Any, *, paths: bool) -> Any:
    """Compile a JSON body template: strings with placeholders become fill functions."""
    if isinstance(template, str):
        if not slots_in(template, paths=paths):
            return template
        whole = PLACEHOLDER.fullmatch(template)
        slot = parse_slot(whole.group(1), paths=paths) if whole else None
        if slot is not None and slot.path is not None and not slot.filters:
            return slot
        return TextTemplate(template, paths=paths)
    if isinstance(template, Mapping):
        return {key: _json_value(value, paths=paths) for key, value in template.items()}
    if isinstance(template, list):
        return [_json_value(item, paths=paths) for item in template]
    return template


class _Missing(Exception):
    pass


class BodyTemplate:
    """Any JSON value; each string holding a placeholder is filled by data."""

    def __init__(self, template: Any, *, paths: bool = False) -> None:
        self._compiled = _json_value(template, paths=paths)

    def fill(self, context: Context) -> Any:
        """The JSON value for ``context``; raises LookupError when a value is missing."""
        try:
            return self._fill(self._compiled, context)
        except _Missing:
            raise LookupError("a body placeholder has no value") from None

    def _fill(self, node: Any, context: Context) -> Any:
        if isinstance(node, Slot):
            value = node.value(context)
            if value is None:
                raise _Missing
            return value
        if isinstance(node, TextTemplate):
            text = node.fill(context)
            if text is None:
                raise _Missing
            return text
        if isinstance(node, dict):
            return {key: self._fill(value, context) for key, value in node.items()}
        if isinstance(node, list):
            return [self._fill(item, context) for item in node]
        return node


def _literal(value: Any) -> str:
    """A JMESPath literal holding ``value`` exactly (backticks escaped)."""
    return "`" + json.dumps(value, ensure_ascii=False).replace("`", "\\`") + "`"


class SelectTemplate:
    """A JMESPath ``select`` whose ``{email...}`` placeholders become literals.

    A placeholder written inside quotes (``'{email|lower}'``) takes the quotes with it, so
    ``users[?lower(email)=='{email|lower}']`` compares against the exact text.
    """

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._slots: list[Slot] = []

        def mark(match: re.Match[str]) -> str:
            inner = (match.group(1) or match.group(2))[1:-1]
            slot = parse_slot(inner, paths=False)
            if slot is None:
                return match.group(0)
            self._slots.append(slot)
            return _STAND_IN.format(len(self._slots) - 1)

        self._marked = _QUOTED_PLACEHOLDER.sub(mark, expression)
        probe = self._marked
        for index in range(len(self._slots)):
            probe = probe.replace(_STAND_IN.format(index), _literal("probe"))
        compile_jmespath(probe)

    def compiled(self, context: Context) -> ParsedResult:
        """The expression for ``context``, compiled (cached by its text)."""
        text = self._marked
        for index, slot in enumerate(self._slots):
            text = text.replace(_STAND_IN.format(index), _literal(slot.text(context)))
        return _compile_cached(text)


@functools.lru_cache(maxsize=512)
def _compile_cached(text: str) -> ParsedResult:
    return jmespath.compile(text)
