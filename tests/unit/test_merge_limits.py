"""Hostile answers: keys that all sanitize alike, and answers cut at ``merge.max_keys``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import product
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.config import parse_settings
from aggregator.errors import ConfigError
from aggregator.merge import (
    MAX_KEY_CHARS,
    Scalar,
    Source,
    flatten,
    merge_profile,
    sanitize_key,
)

FAST = settings(max_examples=150, deadline=None)


def alike_keys(count: int, base: str = "a") -> list[str]:
    """``count`` distinct keys that all sanitize to ``base``: ``a!``, ``a#``, ``a!#``, ..."""
    marks = "!#%&*+,-./:;<=>?@[]^`{|}~"
    keys: list[str] = []
    for length in range(1, 5):
        for combo in product(marks, repeat=length):
            keys.append(base + "".join(combo))
            if len(keys) == count:
                return keys
    raise ValueError("too many")


def renamed_by_the_rule(pairs: list[tuple[str, Scalar]]) -> dict[str, Scalar]:
    """The renaming rule read plainly: the first free of ``key``, ``key_2``, ``key_3``, ..."""
    out: dict[str, Scalar] = {}
    for key, value in pairs:
        candidate, n = key, 2
        while candidate in out:
            candidate, n = f"{key}_{n}", n + 1
        out[candidate] = value
    return out


class CountingMapping(Mapping[str, Any]):
    """A mapping that counts how many of its items were looked at."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.visited = 0

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[str]:
        for key in self.data:
            self.visited += 1
            yield key


# --- collisions -----------------------------------------------------------------------------

colliding = st.lists(
    st.tuples(
        st.sampled_from(["a", "a_2", "a_3", "a_2_2", "a_1", "A!", "b", "b_2", "a_b"]),
        st.integers(0, 9),
    ),
    max_size=40,
)


@FAST
@given(colliding)
def test_renaming_follows_the_rule_whatever_the_keys_are(pairs: list[tuple[str, int]]) -> None:
    # Trailing "!"s make each raw key distinct without changing what it sanitizes to.
    data = {f"{key}{'!' * index}": value for index, (key, value) in enumerate(pairs)}
    expected = renamed_by_the_rule([(sanitize_key(key), value) for key, value in pairs])
    assert list(flatten(data).items()) == list(expected.items())


def test_thousands_of_keys_sanitizing_alike_are_all_kept_in_order() -> None:
    keys = alike_keys(6000)
    result = flatten({key: index for index, key in enumerate(keys)})
    expected = {"a": 0} | {f"a_{n}": n - 1 for n in range(2, 6001)}
    assert list(result.items()) == list(expected.items())


def test_alike_keys_from_two_connectors_with_one_prefix() -> None:
    sources = [Source("crm", ""), Source("db", "")]
    fields = {
        "crm": {key: "crm" for key in alike_keys(300)},
        "db": {key: "db" for key in alike_keys(300)},
    }
    result = merge_profile(sources, fields, meta={})
    assert len(result) == 600
    assert result["a_300"] == "crm"
    assert result["db_a"] == "db"
    assert result["db_a_300"] == "db"


# --- max_keys -------------------------------------------------------------------------------


def test_an_answer_over_max_keys_is_cut_and_marked() -> None:
    data = {f"field{i}": i for i in range(50)}
    result = flatten(data, max_keys=10)
    assert list(result) == [f"field{i}" for i in range(10)] + ["truncated"]
    assert result["truncated"] is True


def test_an_answer_at_max_keys_exactly_is_not_marked() -> None:
    data = {f"field{i}": i for i in range(10)}
    assert flatten(data, max_keys=10) == data


def test_a_cut_answer_keeps_its_own_truncated_field_under_another_name() -> None:
    data = {"truncated": "by the CRM", **{f"f{i}": i for i in range(5)}}
    result = flatten(data, max_keys=3)
    assert result == {"f0": 0, "f1": 1, "truncated_2": "by the CRM", "truncated": True}


def test_the_walk_stops_at_max_keys() -> None:
    inner = CountingMapping({f"k{i}": i for i in range(60_000)})
    result = flatten({"big": inner}, max_keys=100)
    assert len(result) == 101
    assert inner.visited <= 101


def test_keys_sanitizing_to_nothing_do_not_count() -> None:
    data = {"!" * (i + 1): i for i in range(20)} | {"a": 1, "b": 2}
    assert flatten(data, max_keys=2) == {"a": 1, "b": 2}


def test_a_cut_flat_answer_is_cut_the_same_again() -> None:
    data = {"plan": {f"x{i}": [{"id": i}] for i in range(40)}}
    once = flatten(data, max_keys=25)
    assert flatten(once, max_keys=25) == once


def test_the_answer_is_capped_across_connectors_with_a_marker_per_cut_connector() -> None:
    sources = [Source("crm", "crm"), Source("db", "db"), Source("billing", "billing")]
    fields: dict[str, Any] = {
        "billing": {"plan": "Pro"},
        "db": {f"col{i}": i for i in range(8)},
        "crm": {f"f{i}": i for i in range(6)},
    }
    meta: dict[str, Scalar] = {"profile_complete": True}
    result = merge_profile(sources, fields, meta=meta, max_keys=10)
    assert list(result) == [
        "profile_complete",
        *(f"crm_f{i}" for i in range(6)),
        *(f"db_col{i}" for i in range(4)),
        "db_truncated",
        "billing_truncated",
    ]


def test_merge_caps_flat_and_raw_answers_alike() -> None:
    sources = [Source("crm", ""), Source("db", "")]
    fields: dict[str, Any] = {
        "crm": {f"k{i}": {"v": i} for i in range(30)},
        "db": {"truncated": 1, "k0_v": "db"},
    }
    flat = {name: flatten(answer, max_keys=20) for name, answer in fields.items()}
    raw = merge_profile(sources, fields, meta={}, max_keys=20)
    assert merge_profile(sources, flat, meta={}, max_keys=20, flat=True) == raw
    assert raw["truncated"] is True
    assert raw["db_truncated"] is True
    assert len(raw) == 22


@FAST
@given(
    st.dictionaries(
        st.text(max_size=4),
        st.recursive(
            st.integers() | st.text(max_size=3),
            lambda children: st.dictionaries(st.text(max_size=4), children, max_size=5),
            max_leaves=20,
        ),
        max_size=8,
    ),
    st.integers(1, 12),
)
def test_a_cut_answer_is_the_uncut_answer_shortened(data: dict[str, Any], limit: int) -> None:
    whole = flatten(data)
    cut = flatten(data, max_keys=limit)
    if len(whole) <= limit:
        assert cut == whole
    else:
        assert list(cut.items()) == [*list(whole.items())[:limit], ("truncated", True)]


# --- the setting ----------------------------------------------------------------------------


def test_max_keys_defaults_to_a_thousand_and_is_validated() -> None:
    auth = 'auth:\n  api_tokens: ["t0ken"]\n'
    assert parse_settings(auth).merge.max_keys == 1000
    assert parse_settings(auth + "merge:\n  max_keys: 50\n").merge.max_keys == 50
    with pytest.raises(ConfigError) as info:
        parse_settings(auth + "merge:\n  max_keys: 0\n", source="config.yaml")
    assert info.value.problems == [
        "config.yaml:4: merge.max_keys: Input should be greater than or equal to 1"
    ]


def test_a_connector_cut_by_the_answer_cap_keeps_its_own_truncated_field_too() -> None:
    sources = [Source("crm", "crm"), Source("db", "db")]
    fields: dict[str, Any] = {"crm": {"a": 1, "b": 2}, "db": {"truncated": "no", "x": 1, "y": 2}}
    result = merge_profile(sources, fields, meta={}, max_keys=4)
    assert result == {
        "crm_a": 1,
        "crm_b": 2,
        "db_truncated_2": "no",
        "db_x": 1,
        "db_truncated": True,
    }


# --- long texts and keys --------------------------------------------------------------------


def test_a_long_text_is_cut_and_ends_with_an_ellipsis() -> None:
    data = {"note": "x" * 30_000_000, "short": "ok", "tags": ["a" * 50, "b" * 50]}
    result = flatten(data, max_value_chars=40)
    assert result == {"note": "x" * 40 + "…", "short": "ok", "tags": "a" * 40 + "…"}


def test_a_cut_text_is_cut_the_same_again() -> None:
    once = flatten({"note": "y" * 100}, max_value_chars=10)
    assert flatten(once, max_value_chars=10) == once


def test_a_key_longer_than_max_key_chars_is_cut() -> None:
    result = flatten({"k" * 1_000_000: 1, "k" * 300: 2})
    assert list(result) == ["k" * MAX_KEY_CHARS, "k" * MAX_KEY_CHARS + "_2"]


def test_merge_cuts_texts_of_raw_answers() -> None:
    result = merge_profile(
        [Source("db", "db")], {"db": {"note": "z" * 99}}, meta={}, max_value_chars=9
    )
    assert result == {"db_note": "z" * 9 + "…"}
