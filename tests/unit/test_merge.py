"""One test per rule of CONTRACT section 3, with plain dicts."""

from __future__ import annotations

import enum
import ipaddress
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

import orjson
import pytest

from aggregator.merge import (
    RESERVED_KEYS,
    TRUNCATED,
    Source,
    flatten,
    merge_profile,
    meta_keys,
    money,
    sanitize_key,
    to_scalar,
)

FETCHED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def meta(prefix: str = "profile", **errors: str) -> dict[str, Any]:
    return meta_keys(
        prefix, complete=not errors, fetched_at=FETCHED, cached=False, stale=False, errors=errors
    )


class Plan(enum.Enum):
    PRO = "pro"


class Level(enum.IntEnum):
    HIGH = 3


# --- sanitize_key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Plan Name!!", "plan_name"),
        ("__A--b__", "a_b"),
        ("already_ok_1", "already_ok_1"),
        ("a   b\t\nc", "a_b_c"),
        ("signedUpAt", "signedupat"),
        ("Prénom", "pr_nom"),
        ("données.clé", "donn_es_cl"),
        ("日本語", ""),
        ("!!!", ""),
        ("", ""),
        ("E-Mail", "e_mail"),
    ],
)
def test_sanitize_key(raw: str, expected: str) -> None:
    assert sanitize_key(raw) == expected


# --- to_scalar ------------------------------------------------------------------------------


def test_naive_datetime_is_taken_as_utc() -> None:
    assert to_scalar(datetime(2024, 5, 1, 12, 0, 0)) == "2024-05-01T12:00:00Z"


def test_aware_datetime_is_converted_to_utc_at_seconds_precision() -> None:
    paris_summer = timezone(timedelta(hours=2))
    value = datetime(2024, 5, 1, 14, 0, 0, 987654, tzinfo=paris_summer)
    assert to_scalar(value) == "2024-05-01T12:00:00Z"


def test_date_and_time() -> None:
    assert to_scalar(date(2024, 5, 1)) == "2024-05-01"
    assert to_scalar(time(9, 30)) == "09:30:00"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("150.00"), 150),
        (Decimal("-3"), -3),
        (Decimal("12.5"), 12.5),
        (Decimal("NaN"), None),
        (Decimal("sNaN"), None),
        (Decimal("Infinity"), None),
        (Decimal("-Infinity"), None),
        (Decimal("1E+30"), "1E+30"),
    ],
)
def test_decimal(value: Decimal, expected: object) -> None:
    result = to_scalar(value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_float_is_null(value: float) -> None:
    assert to_scalar(value) is None


def test_identity_for_plain_scalars() -> None:
    for value in ("text", 0, -7, 2.5, True, False, None):
        result = to_scalar(value)
        assert result == value
        assert type(result) is type(value)


def test_int_out_of_json_range_becomes_text() -> None:
    assert to_scalar(2**64 - 1) == 2**64 - 1
    assert to_scalar(2**64) == str(2**64)
    assert to_scalar(-(2**63) - 1) == str(-(2**63) - 1)


def test_objects_become_text() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert to_scalar(ident) == "12345678-1234-5678-1234-567812345678"
    assert to_scalar(Plan.PRO) == "pro"
    assert to_scalar(Level.HIGH) == 3
    assert to_scalar(ipaddress.ip_address("10.0.0.1")) == "10.0.0.1"
    assert to_scalar(ipaddress.ip_address("::1")) == "::1"
    assert to_scalar(PurePosixPath("/tmp/x")) == "/tmp/x"
    assert to_scalar(timedelta(days=1)) == "1 day, 0:00:00"


def test_bytes_are_decoded_replacing_bad_utf8() -> None:
    assert to_scalar("héllo".encode()) == "héllo"
    assert to_scalar(b"ok\xff") == "ok\ufffd"
    assert to_scalar(bytearray(b"abc")) == "abc"


def test_lone_surrogate_is_replaced_so_the_answer_encodes() -> None:
    value = to_scalar("a\ud800b")
    assert value == "a\ufffdb"
    orjson.dumps(value)


# --- flatten --------------------------------------------------------------------------------


def test_nested_mappings_flatten_with_underscore() -> None:
    data = {"plan": {"name": "Pro", "Seat Count": 5, "limits": {"API calls": 10}}}
    assert flatten(data) == {"plan_name": "Pro", "plan_seat_count": 5, "plan_limits_api_calls": 10}


def test_empty_key_adds_nothing_to_the_path() -> None:
    data = {"plan": {"!!": {"name": "Pro"}}, "???": {"seats": 3}, "***": "dropped"}
    assert flatten(data) == {"plan_name": "Pro", "seats": 3}


def test_keys_sanitizing_alike_keep_both_values() -> None:
    data = {"Plan Name": "a", "plan_name": "b", "plan": {"name": "c"}}
    assert flatten(data) == {"plan_name": "a", "plan_name_2": "b", "plan_name_3": "c"}


def test_list_of_scalars_is_one_string() -> None:
    data = {"tags": ["vip", None, 3, 2.5, True, False, datetime(2024, 5, 1, 12, 0)]}
    assert flatten(data) == {"tags": "vip, 3, 2.5, true, false, 2024-05-01T12:00:00Z"}


def test_tuple_and_set_of_scalars() -> None:
    assert flatten({"t": ("a", "b")}) == {"t": "a, b"}
    assert flatten({"s": {"b", "c", "a"}}) == {"s": "a, b, c"}


def test_list_of_only_nulls_is_null() -> None:
    assert flatten({"tags": [None, float("nan")]}) == {"tags": None}


def test_list_of_objects_is_indexed_with_a_count_and_cut() -> None:
    invoices = [{"id": f"in_{i}", "paid": i % 2 == 0} for i in range(5)]
    assert flatten({"invoices": invoices}) == {
        "invoices_0_id": "in_0",
        "invoices_0_paid": True,
        "invoices_1_id": "in_1",
        "invoices_1_paid": False,
        "invoices_2_id": "in_2",
        "invoices_2_paid": True,
        "invoices_count": 5,
    }


def test_max_list_items_is_honoured() -> None:
    items = [{"id": i} for i in range(4)]
    assert flatten({"x": items}, max_list_items=1) == {"x_0_id": 0, "x_count": 4}
    assert flatten({"x": items}, max_list_items=0) == {"x_count": 4}


def test_mixed_list_indexes_scalars_and_recurses_into_lists() -> None:
    data = {"x": [{"a": 1}, "two", [3, 4], [{"b": 5}], None]}
    assert flatten(data, max_list_items=5) == {
        "x_0_a": 1,
        "x_1": "two",
        "x_2": "3, 4",
        "x_3_0_b": 5,
        "x_3_count": 1,
        "x_4": None,
        "x_count": 5,
    }


def test_empty_list_is_only_a_count() -> None:
    expected = {"tags_count": 0, "plan_addons_count": 0}
    assert flatten({"tags": [], "plan": {"addons": []}}) == expected


def test_json_string_is_not_parsed() -> None:
    assert flatten({"raw": '{"a": 1}'}) == {"raw": '{"a": 1}'}


def test_values_are_converted() -> None:
    data = {"amount": Decimal("9.99"), "id": uuid.UUID(int=1), "score": float("nan")}
    assert flatten(data) == {
        "amount": 9.99,
        "id": "00000000-0000-0000-0000-000000000001",
        "score": None,
    }


def test_self_referencing_data_is_cut_not_looped() -> None:
    data: dict[str, Any] = {"a": 1}
    data["me"] = data
    assert flatten(data) == {"a": 1, "me": TRUNCATED}


def test_very_deep_data_is_cut_instead_of_crashing() -> None:
    data: dict[str, Any] = {"leaf": 1}
    for _ in range(2000):
        data = {"n": data}
    flat = flatten(data)
    assert list(flat.values()) == [TRUNCATED]


# --- meta_keys ------------------------------------------------------------------------------


def test_meta_keys() -> None:
    when = datetime(2024, 5, 1, 14, 0, 0, 500000, tzinfo=timezone(timedelta(hours=2)))
    result = meta_keys(
        "profile",
        complete=False,
        fetched_at=when,
        cached=True,
        stale=True,
        errors={"stripe": "timeout", "My CRM": "unavailable"},
    )
    assert result == {
        "profile_complete": False,
        "profile_fetched_at": "2024-05-01T12:00:00Z",
        "profile_cached": True,
        "profile_stale": True,
        "stripe_error": "timeout",
        "my_crm_error": "unavailable",
    }


def test_meta_keys_with_custom_and_empty_prefix() -> None:
    assert "groove_meta_cached" in meta("Groove Meta")
    assert set(meta("", crm="error")) == {"complete", "fetched_at", "cached", "stale", "crm_error"}


# --- merge_profile --------------------------------------------------------------------------


def test_connector_fields_are_prefixed() -> None:
    result = merge_profile(
        [Source("stripe", "stripe"), Source("db", "account")],
        {"stripe": {"plan": {"name": "Pro"}}, "db": {"Seats": 4}},
        meta=meta(),
    )
    assert result == {**meta(), "stripe_plan_name": "Pro", "account_seats": 4}


def test_prefix_is_sanitized() -> None:
    result = merge_profile([Source("crm", "My CRM!")], {"crm": {"id": 1}}, meta={})
    assert result == {"my_crm_id": 1}


@pytest.mark.parametrize("key", sorted(RESERVED_KEYS))
def test_reserved_key_with_empty_prefix_is_renamed(key: str) -> None:
    result = merge_profile([Source("db", "")], {"db": {key: "x", "plan": "Pro"}}, meta={})
    assert result == {f"db_{key}": "x", "plan": "Pro"}


def test_reserved_key_made_by_a_prefix_is_renamed() -> None:
    result = merge_profile([Source("crm", "first")], {"crm": {"Name": "Ada"}}, meta={})
    assert result == {"crm_first_name": "Ada"}


def test_renamed_key_that_is_itself_reserved_gets_a_number() -> None:
    result = merge_profile([Source("first", "")], {"first": {"name": "Ada"}}, meta={})
    assert result == {"first_name_2": "Ada"}


@pytest.mark.parametrize("reverse", [False, True])
def test_collision_keeps_the_config_first_whatever_the_answer_order(reverse: bool) -> None:
    answers = [("crm", {"plan": "from crm"}), ("db", {"plan": "from db"})]
    fields = dict(reversed(answers) if reverse else answers)
    sources = [Source("db", ""), Source("crm", "")]
    result = merge_profile(sources, fields, meta={})
    assert list(result.items()) == [("plan", "from db"), ("crm_plan", "from crm")]


def test_chained_collisions_count_up() -> None:
    sources = [Source("a", ""), Source("b", ""), Source("c", "")]
    fields = {
        "c": {"plan": "c"},
        "b": {"plan": "b"},
        "a": {"plan": "a", "b_plan": "a2", "b_plan_2": "a3"},
    }
    result = merge_profile(sources, fields, meta={})
    assert result == {"plan": "a", "b_plan": "a2", "b_plan_2": "a3", "b_plan_3": "b", "c_plan": "c"}


def test_same_prefix_on_two_connectors() -> None:
    sources = [Source("crm", "crm"), Source("crm_eu", "crm")]
    result = merge_profile(sources, {"crm_eu": {"id": 2}, "crm": {"id": 1}}, meta={})
    assert result == {"crm_id": 1, "crm_eu_crm_id": 2}


def test_meta_keys_win() -> None:
    sources = [Source("db", "profile"), Source("x", "")]
    fields = {"db": {"complete": "no"}, "x": {"profile_cached": "yes"}}
    result = merge_profile(sources, fields, meta=meta())
    assert result["profile_complete"] is True
    assert result["profile_cached"] is False
    assert result["db_profile_complete"] == "no"
    assert result["x_profile_cached"] == "yes"


def test_connector_without_answer_adds_nothing() -> None:
    sources = [Source("stripe", "stripe"), Source("db", "db"), Source("crm", "crm")]
    fields = {"stripe": None, "crm": {}, "retired": {"a": 1}}
    assert merge_profile(sources, fields, meta=meta()) == meta()


def test_invalid_meta_key_is_a_bug() -> None:
    with pytest.raises(ValueError, match="meta key"):
        merge_profile([], {}, meta={"status": "x"})
    with pytest.raises(ValueError, match="meta key"):
        merge_profile([], {}, meta={"Bad Key": 1})


def test_whole_answer_encodes_as_flat_json() -> None:
    sources = [Source("stripe", "stripe"), Source("db", "")]
    fields: dict[str, Any] = {
        "stripe": {
            "balance": Decimal("NaN"),
            "created": datetime(2020, 1, 1),
            "subscriptions": [{"id": "sub_1", "items": [{"price": 1500}]}],
        },
        "db": {"email": "a@example.com", "big": 10**30, "raw": b"\xff"},
    }
    body = orjson.loads(orjson.dumps(merge_profile(sources, fields, meta=meta("profile"))))
    assert body["stripe_balance"] is None
    assert body["stripe_created"] == "2020-01-01T00:00:00Z"
    assert body["stripe_subscriptions_0_items_0_price"] == 1500
    assert body["stripe_subscriptions_count"] == 1
    assert body["db_email"] == "a@example.com"
    assert "email" not in body
    assert body["big"] == str(10**30)
    assert all(not isinstance(v, dict | list) for v in body.values())


# --- money ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "currency", "expected"),
    [
        (15000, "usd", "$150.00"),
        (150000, "USD", "$1500.00"),
        (-500, "usd", "-$5.00"),
        (0, "usd", "$0.00"),
        (1999, "eur", "€19.99"),
        (5, "gbp", "£0.05"),
        (1500, "jpy", "1500 JPY"),
        (-1500, "JPY", "-1500 JPY"),
        (1234, "krw", "1234 KRW"),
        (1500, "kwd", "1.500 KWD"),
        (7, "bhd", "0.007 BHD"),
        (15000, "chf", "150.00 CHF"),
        (-15050, "Chf", "-150.50 CHF"),
        (500, "isk", "5.00 ISK"),
        (10**30 + 1, "usd", "$10000000000000000000000000000.01"),
    ],
)
def test_money(units: int, currency: str, expected: str) -> None:
    assert money(units, currency) == expected
