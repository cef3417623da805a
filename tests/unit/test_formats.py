"""Per-field display formats: money as Stripe shows it, dates as ISO, bad specs refused."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from aggregator.formats import apply_formats, parse_format, parse_formats


@pytest.mark.parametrize(
    ("spec", "value", "shown"),
    [
        ("money:eur", 2400, "€2400.00"),
        ("money:eur", Decimal("2970.00"), "€2970.00"),
        ("money:usd", Decimal("1499.5"), "$1499.50"),
        ("money:usd", -5, "-$5.00"),
        ("money:usd", 1.005, "$1.00"),
        ("money:usd", "29.00", "$29.00"),
        ("money:chf", 150, "150.00 CHF"),
        ("money:jpy", 1500, "1500 JPY"),
        ("money:GBP", 3, "£3.00"),
        ("cents:usd", 2400, "$24.00"),
        ("cents:jpy", 1500, "1500 JPY"),
        ("date", dt.date(2024, 5, 1), "2024-05-01"),
        (
            "date",
            dt.datetime(2024, 5, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            "2024-05-02",
        ),
        ("date", dt.datetime(2024, 5, 1, 23, 30), "2024-05-01"),
        ("date", "2024-05-01T12:00:00Z", "2024-05-01"),
        (
            "datetime",
            dt.datetime(2024, 5, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2024-05-01T12:00:00Z",
        ),
        ("datetime", "2024-05-01", "2024-05-01T00:00:00Z"),
        ("datetime", dt.date(2024, 5, 1), "2024-05-01"),
    ],
)
def test_a_value_is_shown_as_its_format_says(spec: str, value: Any, shown: str) -> None:
    assert apply_formats({"x": value}, parse_formats({"x": spec})) == {"x": shown}


def test_currency_from_another_field_of_the_record() -> None:
    formats = parse_formats({"amount": "money:@currency", "balance": "cents:@currency"})
    row = {"amount": Decimal("150"), "balance": 995, "currency": "CHF"}
    assert apply_formats(row, formats) == {
        "amount": "150.00 CHF",
        "balance": "9.95 CHF",
        "currency": "CHF",
    }


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ("money:usd", None),
        ("money:usd", "n/a"),
        ("money:usd", True),
        ("money:usd", float("nan")),
        ("money:@currency", 10),  # no currency field in the record
        ("date", "not a date"),
        ("date", 17),
    ],
)
def test_a_value_that_does_not_fit_is_left_as_it_is(spec: str, value: Any) -> None:
    assert apply_formats({"x": value}, parse_formats({"x": spec})) == {"x": value}


def test_fields_without_a_format_and_absent_fields_are_untouched() -> None:
    formats = parse_formats({"mrr": "money:usd", "missing": "date"})
    assert apply_formats({"mrr": 1, "plan": "Pro"}, formats) == {"mrr": "$1.00", "plan": "Pro"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("money", "money needs a currency"),
        ("cents:", "cents needs a currency"),
        ("money:euro", "not a currency"),
        ("money:@", "not a currency"),
        ("percent", "unknown format 'percent'"),
        ("", "unknown format"),
    ],
)
def test_a_bad_spec_says_what_is_valid(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_format(spec)
