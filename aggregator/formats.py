"""Per-field display formats, so every source shows money and dates the way Stripe's do.

A connector that returns records (the ``formats`` of the postgres and rest connectors, of
a rest connector's ``then`` steps and of the presets) names a format per field:

- ``money:eur``: an amount in major units (``2400``, ``1499.50``) -> ``"€2400.00"``;
- ``money:@currency``: the same, the currency code read from the record's ``currency``
  field -> ``"150.00 CHF"``;
- ``cents:usd`` (or ``cents:@currency``): an amount in minor units, as Stripe sends them,
  ``2400`` -> ``"$24.00"``;
- ``date``: a date, a datetime (taken in UTC; one without a zone is UTC) or an ISO 8601
  string -> ``"2024-05-01"``;
- ``datetime``: the same -> ``"2024-05-01T12:00:00Z"``.

Money uses ``aggregator.merge.money`` (the Stripe connector's): symbol for usd/eur/gbp,
else the code after the amount, the currency's own number of decimals. A value that does
not fit its format (text in a money column, an unknown currency field) is left as it is;
``None`` stays ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from aggregator.merge import currency_exponent, money

Kind = Literal["money", "cents", "date", "datetime"]

_CURRENCY = re.compile(r"[a-z]{3}")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SPECS = "money:<currency>, money:@<field>, cents:<currency>, cents:@<field>, date, datetime"


@dataclass(frozen=True)
class FieldFormat:
    """One parsed format spec: what kind, and where the currency comes from."""

    kind: Kind
    currency: str | None = None
    currency_field: str | None = None

    def apply(self, value: Any, record: Mapping[str, Any]) -> Any:
        """``value`` formatted for display (``record`` supplies a currency field)."""
        if value is None:
            return None
        if self.kind in ("date", "datetime"):
            moment = _moment(value)
            if moment is None:
                return value
            if self.kind == "date":
                return moment.isoformat()[:10]
            if not isinstance(moment, datetime):
                return moment.isoformat()
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        code = self.currency or _code(record.get(self.currency_field or ""))
        amount = _amount(value)
        if code is None or amount is None:
            return value
        minor = amount if self.kind == "cents" else amount.scaleb(currency_exponent(code))
        return money(int(minor.to_integral_value()), code)


def parse_format(spec: str) -> FieldFormat:
    """Parse ``money:eur``, ``cents:@currency``, ``date``...; ``ValueError`` says what is valid."""
    text = spec.strip()
    if text in ("date", "datetime"):
        return FieldFormat(text)  # type: ignore[arg-type]
    kind, _, currency = text.partition(":")
    if kind in ("money", "cents") and currency:
        if currency.startswith("@") and _FIELD.fullmatch(currency[1:]):
            return FieldFormat(kind, currency_field=currency[1:])  # type: ignore[arg-type]
        if _CURRENCY.fullmatch(currency.lower()):
            return FieldFormat(kind, currency=currency.lower())  # type: ignore[arg-type]
        raise ValueError(
            f"{currency!r} is not a currency: use a 3-letter ISO code (eur) or @<field>"
        )
    if kind in ("money", "cents"):
        raise ValueError(f"{kind} needs a currency: {kind}:eur, or {kind}:@<field> for a field")
    raise ValueError(f"unknown format {spec!r}; one of: {SPECS}")


def parse_formats(specs: Mapping[str, str]) -> dict[str, FieldFormat]:
    """Every spec of a ``formats`` mapping, parsed (``ValueError`` names the field)."""
    parsed = {}
    for field_name, spec in specs.items():
        try:
            parsed[field_name] = parse_format(spec)
        except ValueError as exc:
            raise ValueError(f"{field_name}: {exc}") from None
    return parsed


def check_format(spec: str) -> str:
    """``spec`` unchanged when it is a valid format (a pydantic validator); ValueError else."""
    parse_format(spec)
    return spec


FormatSpec = Annotated[str, AfterValidator(check_format)]
"""A config value holding one format spec, refused at its line when invalid."""


def check_names(specs: Mapping[str, str], names: Collection[str], what: str = "fields") -> None:
    """ValueError when a format, or a money format's ``@field``, names no field in ``names``."""
    for field_name, spec in specs.items():
        if field_name not in names:
            raise ValueError(f"{field_name!r} is not one of the {what} ({_listed(names)})")
        try:
            source = parse_format(spec).currency_field
        except ValueError:
            continue  # reported at the spec's own line
        if source is not None and source not in names:
            raise ValueError(
                f"{field_name}: {spec!r} reads the currency from {source!r}, "
                f"which is not one of the {what} ({_listed(names)})"
            )


def _listed(names: Collection[str]) -> str:
    shown = sorted(names)
    return ", ".join(shown[:12]) + (", ..." if len(shown) > 12 else "")


def apply_formats(record: Mapping[str, Any], formats: Mapping[str, FieldFormat]) -> dict[str, Any]:
    """A copy of ``record`` with each formatted field replaced by its display value."""
    out = dict(record)
    for field_name, fmt in formats.items():
        if field_name in out:
            out[field_name] = fmt.apply(record[field_name], record)
    return out


def _amount(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        amount = Decimal(value) if isinstance(value, int | Decimal | str) else Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError):
        return None
    return amount if amount.is_finite() else None


def _code(value: Any) -> str | None:
    if isinstance(value, str) and _CURRENCY.fullmatch(value.strip().lower()):
        return value.strip().lower()
    return None


def _moment(value: Any) -> date | datetime | None:
    """A date, or a datetime in UTC (one without a zone is taken as UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value if isinstance(value, date) else None
