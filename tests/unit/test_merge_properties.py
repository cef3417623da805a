"""Properties of the merge over arbitrary nested JSON-like answers and configs."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.merge import (
    RESERVED_KEYS,
    Scalar,
    Source,
    flatten,
    merge_profile,
    meta_keys,
    sanitize_key,
)

KEY = re.compile(r"^[a-z0-9_]+$")
SCALAR_TYPES = (str, int, float, bool, type(None))
FAST = settings(max_examples=80, deadline=None)

# Names that collide often: reserved keys, meta keys, connector names, list suffixes.
LIKELY = ["name", "Status", "EMAIL", "first", "First Name", "full", "profile", "complete"]
LIKELY += ["plan", "count", "0", "db", "crm", "a b", "A-B", "", "!!", "é"]

keys = st.one_of(st.sampled_from(LIKELY), st.text(max_size=8))
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.decimals(),
    st.datetimes(timezones=st.sampled_from([None, UTC])),
)
json_like = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=12,
)
answers = st.none() | st.dictionaries(keys, json_like, max_size=5)
names = st.one_of(st.sampled_from(LIKELY[:-3]), st.text(min_size=1, max_size=6))
prefixes = st.one_of(st.sampled_from(["", "first", "profile", "db", "crm", "x!"]), st.text())


@st.composite
def configs(draw: st.DrawFn) -> tuple[list[Source], dict[str, Any], dict[str, Scalar]]:
    """Sources in config order, their answers in a random order, and the meta keys."""
    source_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    sources = [Source(name, draw(prefixes)) for name in source_names]
    fields = {name: draw(answers) for name in draw(st.permutations(source_names))}
    failed = draw(st.lists(st.sampled_from(source_names), unique=True))
    meta = meta_keys(
        draw(st.sampled_from(["profile", "", "Meta Data", "first"])),
        complete=not failed,
        fetched_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        cached=draw(st.booleans()),
        stale=draw(st.booleans()),
        errors={name: "timeout" for name in failed},
    )
    return sources, fields, meta


def assert_flat(result: Mapping[str, object]) -> None:
    for key, value in result.items():
        assert KEY.match(key), key
        assert isinstance(value, SCALAR_TYPES), (key, value)
        assert not isinstance(value, float) or math.isfinite(value), (key, value)
    orjson.dumps(result)


def count_values(value: Any, path: str = "", max_items: int = 3) -> int:
    """How many keys the flat answer needs for ``value``: one per scalar, list or count."""
    if isinstance(value, Mapping):
        return sum(
            count_values(v, path + sanitize_key(str(k)), max_items) for k, v in value.items()
        )
    if isinstance(value, list):
        if not value:
            return 1
        if any(isinstance(item, Mapping | list) for item in value):
            items = value[: max(0, max_items)]
            return 1 + sum(count_values(item, "i", max_items) for item in items)
    return 1 if path else 0


@FAST
@given(st.text())
def test_sanitized_keys_are_clean_and_stable(raw: str) -> None:
    key = sanitize_key(raw)
    assert key == "" or KEY.match(key)
    assert not key.startswith("_")
    assert not key.endswith("_")
    assert "__" not in key
    assert sanitize_key(key) == key


@FAST
@given(st.dictionaries(keys, json_like, max_size=6), st.integers(-1, 4))
def test_flatten_is_flat_complete_and_idempotent(data: dict[str, Any], max_items: int) -> None:
    flat = flatten(data, max_list_items=max_items)
    assert_flat(flat)
    assert len(flat) == count_values(data, max_items=max_items)
    assert flatten(flat, max_list_items=max_items) == flat


@FAST
@given(configs())
def test_merge_is_flat_clean_and_keeps_every_value(
    config: tuple[list[Source], dict[str, Any], dict[str, Scalar]],
) -> None:
    sources, fields, meta = config
    result = merge_profile(sources, fields, meta=meta)
    assert_flat(result)
    assert not RESERVED_KEYS & result.keys()
    assert list(result.items())[: len(meta)] == list(meta.items())
    contributed = sum(count_values(answer) for answer in fields.values() if answer is not None)
    assert len(result) == len(meta) + contributed


@FAST
@given(configs(), st.data())
def test_merge_ignores_the_order_answers_arrive_in(
    config: tuple[list[Source], dict[str, Any], dict[str, Scalar]],
    data: st.DataObject,
) -> None:
    sources, fields, meta = config
    expected = list(merge_profile(sources, fields, meta=meta).items())
    for order in (list(reversed(fields)), data.draw(st.permutations(list(fields)))):
        shuffled = {name: fields[name] for name in order}
        assert list(merge_profile(sources, shuffled, meta=meta).items()) == expected
