"""The collision report agrees with the merge: who keeps a shared key, who gets renamed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aggregator.collisions import collision_report
from aggregator.merge import Source


def test_a_shared_empty_prefix_names_the_winner_and_the_renamed_key() -> None:
    sources = [Source("db", ""), Source("crm", ""), Source("shop", "shop")]
    shapes: dict[str, Mapping[str, Any] | None] = {
        "db": {"plan": None, "seats": None},
        "crm": {"plan": None, "name": None, "owner": None},
        "shop": {"orders": {"0": {"name": None}, "count": None}},
    }

    report = collision_report(sources, shapes, max_list_items=3)

    assert report == [
        "keys that can collide (the connector listed first keeps the key):",
        "  plan: db keeps it; crm's is crm_plan",
        "  name: Groove's own key; crm's is emitted as crm_name",
    ]


def test_lists_collide_item_by_item_and_unknown_shapes_are_named() -> None:
    sources = [Source("a", "x"), Source("b", "x"), Source("c", "x")]
    shapes = {"a": {"deals": [{"name": None}]}, "b": {"deals": [{"name": None}]}, "c": None}

    report = collision_report(sources, shapes, max_list_items=2)

    assert "  x_deals_0_name: a keeps it; b's is b_x_deals_0_name" in report
    assert "  x_deals_1_name: a keeps it; b's is b_x_deals_1_name" in report
    assert report[-1] == "keys known only after a fetch (collisions not checked): c"


def test_distinct_prefixes_report_nothing() -> None:
    sources = [Source("a", "a"), Source("b", "b")]
    shapes = {"a": {"plan": None}, "b": {"plan": None}}

    assert collision_report(sources, shapes, max_list_items=3) == []
