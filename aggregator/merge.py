"""Pure functions that turn per-connector answers into Groove's one flat namespace.

Nothing here does I/O: the result depends only on the config order of the
connectors, their answers and the meta values (CONTRACT section 3).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any, TypeAlias

__all__ = [
    "RESERVED_KEYS",
    "Scalar",
    "Source",
    "flatten",
    "merge_profile",
    "meta_keys",
    "money",
    "sanitize_key",
    "to_scalar",
]

Scalar: TypeAlias = str | int | float | bool | None

RESERVED_KEYS: frozenset[str] = frozenset(
    {"name", "status", "email", "first_name", "last_name", "full_name"}
)

MAX_DEPTH = 32
"""Containers nested deeper than this (or containing themselves) become ``TRUNCATED``."""
TRUNCATED = "..."
CUT_MARKER = "truncated"
"""The key (``<prefix>_truncated: true`` once prefixed) of an answer cut at ``max_keys``."""
CUT_TEXT = "…"
"""Ends a text cut at ``max_value_chars``."""
MAX_KEY_CHARS = 256
"""Characters of one key of an answer that count; the rest of a longer key is dropped."""

_NOT_KEY_CHARS = re.compile(r"[^a-z0-9]+")
_KEY = re.compile(r"[a-z0-9_]+")
# orjson encodes integers in this range only; larger ones are emitted as strings.
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_SEQUENCES = (list, tuple, set, frozenset)
_CONTAINERS = (Mapping, *_SEQUENCES)

# Stripe's minor units: https://docs.stripe.com/currencies (ISK stays two-decimal in its API).
_ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga"}
    | {"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
_THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


def sanitize_key(key: str) -> str:
    """Lower-case ``key``, turn every run of characters outside ``[a-z0-9]`` into one ``_``."""
    # Only short keys are remembered: long ones would make the cache hold megabytes.
    return _sanitize_cached(key) if len(key) <= _CACHED_KEY_CHARS else _sanitize(key)


def _sanitize(key: str) -> str:
    return _NOT_KEY_CHARS.sub("_", key.lower()).strip("_")


_CACHED_KEY_CHARS = 64
_sanitize_cached = functools.lru_cache(maxsize=8192)(_sanitize)


def to_scalar(value: Any) -> Scalar:
    """Convert one value to something Groove can show and orjson can encode."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, Enum):
        return to_scalar(value.value)
    if isinstance(value, int):
        number = int(value)
        return number if _INT_MIN <= number <= _INT_MAX else str(number)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return _valid_text(str(value))
    if isinstance(value, datetime):
        return _iso_utc(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _valid_text(bytes(value).decode("utf-8", "replace"))
    return _valid_text(str(value))


def flatten(
    data: Mapping[str, Any],
    *,
    max_list_items: int = 3,
    max_keys: int | None = None,
    max_value_chars: int | None = None,
) -> dict[str, Scalar]:
    """Flatten a nested answer into ``{sanitized_key: scalar}`` (CONTRACT section 3).

    A key that sanitizes to ``""`` adds nothing to the path: its children keep
    the rest of their path, and a scalar whose whole path is empty is dropped.
    Two paths that sanitize to the same key keep both values: the later one
    gets ``_2``, ``_3``, ... With ``max_keys``, the walk stops once that many keys
    are out and one more is found: ``truncated: true`` is then added (the last key).
    With ``max_value_chars``, a longer text is cut there and ends with ``…``. A key
    longer than ``MAX_KEY_CHARS`` is cut before it is sanitized.
    """
    walk = _Walk(
        _Names({}),
        max(0, max_list_items),
        None if max_keys is None else max(0, max_keys),
        None if max_value_chars is None else max(1, max_value_chars),
    )
    try:
        walk.value((), data)
    except _Full:
        _mark_cut(walk.names)
    return walk.names.taken


@dataclass(frozen=True, slots=True)
class Source:
    """One enabled connector, as listed in the config: its name and key prefix."""

    name: str
    prefix: str


def meta_keys(
    meta_prefix: str,
    *,
    complete: bool,
    fetched_at: datetime,
    cached: bool,
    stale: bool,
    errors: Mapping[str, str],
) -> dict[str, Scalar]:
    """Build the meta keys: completeness, fetch time, cache state, one ``*_error`` per failure."""
    out: dict[str, Scalar] = {
        _join(meta_prefix, "complete"): complete,
        _join(meta_prefix, "fetched_at"): _iso_utc(fetched_at),
        _join(meta_prefix, "cached"): cached,
        _join(meta_prefix, "stale"): stale,
    }
    names = _Names(out)
    for who, reason in errors.items():
        out[names.free(_join(who, "error"))] = to_scalar(reason)
    return out


def merge_profile(
    sources: Sequence[Source],
    fields: Mapping[str, Mapping[str, Any] | None],
    *,
    meta: Mapping[str, Scalar],
    max_list_items: int = 3,
    flat: bool = False,
    max_keys: int | None = None,
    max_value_chars: int | None = None,
) -> dict[str, Scalar]:
    """Merge every connector's answer into one flat dict; meta first, then config order.

    ``fields`` maps a connector name to its answer (None or absent: no fields);
    its own order never matters. Names not in ``sources`` are ignored. ``flat=True``
    says every answer is already the output of ``flatten`` (skips flattening again).
    With ``max_keys``, the connectors' fields stop at that many keys in all (meta
    keys aside); each connector cut short gets ``<prefix>_truncated: true``. Texts
    are cut at ``max_value_chars`` when the answers are flattened here.
    """
    out: dict[str, Scalar] = {}
    for key, value in meta.items():
        if not _KEY.fullmatch(key) or key in RESERVED_KEYS:
            raise ValueError(f"invalid meta key {key!r}")
        out[key] = to_scalar(value)
    names = _Names(out, RESERVED_KEYS)
    budget = None if max_keys is None else max(0, max_keys)
    seen: set[str] = set()
    for source in sources:
        if source.name in seen:
            continue
        seen.add(source.name)
        answer = fields.get(source.name)
        if answer is None:
            continue
        owner = sanitize_key(source.name)
        items = (
            answer
            if flat
            else flatten(
                answer,
                max_list_items=max_list_items,
                max_keys=budget,
                max_value_chars=max_value_chars,
            )
        )
        if budget is not None:
            if flat and len(items) > budget:
                items = flatten(items, max_keys=budget)
            budget = max(0, budget - len(items))
        for key, value in items.items():
            out[names.claim(_join(source.prefix, key), owner)] = value
    return out


def currency_exponent(currency: str) -> int:
    """Decimal places of a currency's minor unit: 2 for eur, 0 for jpy, 3 for kwd."""
    code = currency.strip().lower()
    return 0 if code in _ZERO_DECIMAL else 3 if code in _THREE_DECIMAL else 2


def money(minor_units: int, currency: str) -> str:
    """Display an amount in minor units: ``"$150.00"``, ``"-$5.00"``, ``"1500 JPY"``."""
    code = currency.strip().lower()
    exponent = currency_exponent(code)
    units = Decimal(minor_units)
    if not units.is_finite():
        raise ValueError(f"not an amount: {minor_units!r}")
    sign, digits, exp = units.as_tuple()
    # Built from the digits, not divided: exact whatever the context's precision.
    text = f"{Decimal((0, digits, int(exp) - exponent)):.{exponent}f}"
    minus = "-" if sign and any(digits) else ""
    symbol = _SYMBOLS.get(code)
    if symbol is not None:
        return f"{minus}{symbol}{text}"
    return f"{minus}{text} {code.upper()}".rstrip()


class _Full(Exception):
    """Raised inside the walk when one key more than ``max_keys`` was found."""


@dataclass(slots=True)
class _Walk:
    """One flattening: where keys go, and the limits of this answer."""

    names: _Names
    max_items: int
    max_keys: int | None
    max_chars: int | None
    ancestors: set[int] = field(default_factory=set)

    def value(self, path: tuple[str, ...], value: Any) -> None:
        """Emit ``value`` (a scalar) or the scalars inside it (a container) under ``path``."""
        if isinstance(value, _CONTAINERS) and (
            len(path) > MAX_DEPTH or id(value) in self.ancestors
        ):
            self.emit(path, TRUNCATED)
            return
        if isinstance(value, str):
            # Cut before converting: a 30 MB text is not copied whole once more.
            limit = self.max_chars
            self.emit(path, to_scalar(value if limit is None else value[: limit + 1]))
        elif isinstance(value, int | float | bool) or value is None:
            self.emit(path, to_scalar(value))
        elif isinstance(value, Mapping):
            self.ancestors.add(id(value))
            for key, child in value.items():
                self.value((*path, sanitize_key(str(key)[:MAX_KEY_CHARS])), child)
            self.ancestors.discard(id(value))
        elif isinstance(value, _SEQUENCES):
            self.sequence(path, value)
        else:
            self.emit(path, to_scalar(value))

    def sequence(
        self, path: tuple[str, ...], value: list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any]
    ) -> None:
        """A list of scalars as one text; of containers, the first items and a count."""
        items = _ordered(value)
        if not items:
            self.emit((*path, "count"), 0)
        elif any(isinstance(item, _CONTAINERS) for item in items):
            self.ancestors.add(id(value))
            for index, item in enumerate(items[: self.max_items]):
                self.value((*path, str(index)), item)
            self.ancestors.discard(id(value))
            self.emit((*path, "count"), len(items))
        else:
            self.emit(path, _join_scalars(items))

    def emit(self, path: tuple[str, ...], value: Scalar) -> None:
        """One key out (renamed if taken), unless its path is empty; _Full past max_keys."""
        key = "_".join(part for part in path if part)
        if not key:
            return
        if self.max_keys is not None and len(self.names.taken) >= self.max_keys:
            raise _Full
        if isinstance(value, str) and self.max_chars is not None and len(value) > self.max_chars:
            value = value[: self.max_chars] + CUT_TEXT
        self.names.taken[self.names.free(key)] = value


def _mark_cut(names: _Names) -> None:
    """End a cut answer with ``truncated: true``; a field of that name moves to a free name."""
    out = names.taken
    if CUT_MARKER in out:
        moved = names.free(CUT_MARKER)
        out[moved] = out.pop(CUT_MARKER)
    out[CUT_MARKER] = True


def _ordered(items: list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any]) -> list[Any]:
    if isinstance(items, set | frozenset):
        return sorted(items, key=lambda item: (type(item).__name__, repr(item)))
    return list(items)


def _join_scalars(items: list[Any]) -> str | None:
    texts: list[str] = []
    for item in items:
        scalar = to_scalar(item)
        if scalar is None:
            continue
        if isinstance(scalar, bool):
            texts.append("true" if scalar else "false")
        else:
            texts.append(str(scalar))
    return ", ".join(texts) if texts else None


def _join(prefix: str, key: str) -> str:
    return sanitize_key(f"{prefix}_{key}")


class _Names:
    """Hands out free keys of one output dict: ``key``, else ``key_2``, ``key_3``, ...

    Keys are only ever added to ``taken``, so a suffix found taken stays taken: each
    base name remembers where its search stopped, and all the renaming of an answer
    costs time linear in its keys (one record with thousands of keys that sanitize
    alike used to cost a scan from ``_2`` for each of them).
    """

    __slots__ = ("_next", "avoid", "taken")

    def __init__(self, taken: dict[str, Scalar], avoid: frozenset[str] = frozenset()) -> None:
        self.taken = taken
        self.avoid = avoid
        self._next: dict[str, int] = {}

    def free(self, key: str) -> str:
        """``key`` if it is free, else the first free ``key_2``, ``key_3``, ..."""
        if key not in self.taken and key not in self.avoid:
            return key
        n = self._next.get(key, 2)
        candidate = f"{key}_{n}"
        while candidate in self.taken or candidate in self.avoid:
            n += 1
            candidate = f"{key}_{n}"
        self._next[key] = n
        return candidate

    def claim(self, key: str, owner: str) -> str:
        """``key`` when free and not reserved, else a free name under the owner's name."""
        if key not in self.taken and key not in RESERVED_KEYS:
            return key
        return self.free(_join(owner, key))


def _iso_utc(moment: datetime) -> str:
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    else:
        try:
            moment = moment.astimezone(UTC)
        except OverflowError:
            return moment.isoformat(timespec="seconds")
    return moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _decimal(value: Decimal) -> Scalar:
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return int(value) if _INT_MIN <= value <= _INT_MAX else str(value)
    number = float(value)
    return number if math.isfinite(number) else None


def _valid_text(text: str) -> str:
    """Replace lone surrogates (from JSON ``\\ud800`` escapes), which orjson refuses."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text
