"""The email Groove sends: normalized for cache keys, remembered as written for upstreams."""

from __future__ import annotations

import pytest

from aggregator.emails import Email, InvalidEmail, as_sent, parse_email


def test_the_normalized_address_is_the_value_and_the_written_one_is_kept() -> None:
    email = parse_email("  Grace.Hopper@Example.com ")
    assert email == "grace.hopper@example.com"
    assert isinstance(email, str)
    assert email.as_sent == "Grace.Hopper@Example.com"
    assert as_sent(email) == "Grace.Hopper@Example.com"
    keyed: dict[str, int] = {email: 1}
    assert keyed["grace.hopper@example.com"] == 1


def test_a_forgotten_plus_is_restored_in_both_forms() -> None:
    email = parse_email("John Tag@Example.com")
    assert email == "john+tag@example.com"
    assert email.as_sent == "John+Tag@Example.com"


def test_a_plain_string_is_its_own_written_form() -> None:
    assert as_sent("ada@example.com") == "ada@example.com"
    assert Email("ada@example.com").as_sent == "ada@example.com"


@pytest.mark.parametrize("raw", [None, "", "   ", "no-at-sign", "a@b", "x" * 300 + "@example.com"])
def test_unusable_addresses_are_refused(raw: str | None) -> None:
    with pytest.raises(InvalidEmail):
        parse_email(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "\u212aate@example.com",  # KELVIN SIGN: lower() would make it kate@example.com
        "\u212bsa@example.com",  # ANGSTROM SIGN: lower() would make it åsa@example.com
        "\uff4bate@example.com",  # FULLWIDTH LATIN SMALL LETTER K
        "\ufb01sh@example.com",  # LATIN SMALL LIGATURE FI
        "kate@exa\u0301mple.com",  # a separate combining accent (NFD)
        "ka\u200bte@example.com",  # ZERO WIDTH SPACE
        "kate@example.com\u00ad",  # SOFT HYPHEN
    ],
)
def test_an_address_that_only_looks_plain_is_refused(raw: str) -> None:
    with pytest.raises(InvalidEmail, match=r"normal form|invisible"):
        parse_email(raw)


def test_plain_unicode_addresses_are_lower_cased_like_ascii_ones() -> None:
    assert parse_email("Ü@Bücher.DE") == "ü@bücher.de"
    assert parse_email("Ü@Bücher.DE").as_sent == "Ü@Bücher.DE"
    assert parse_email("ÅSA@example.com") == "åsa@example.com"
    assert parse_email("Σοφία@example.gr") == "σοφία@example.gr"
