"""What every preset shares: ``api_base``, ``max_items``, ``formats``, safe host labels, value
helpers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, TypeVar

from pydantic import Field, field_validator
from yarl import URL

from aggregator.formats import FieldFormat, FormatSpec, apply_formats, check_names, parse_formats
from aggregator.merge import money
from connectors.base import ConnectorSettings
from connectors.rest import RestBase

HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def host_label(value: str) -> str:
    """A single DNS label (``acme``), so no value can move the request to another host."""
    value = value.strip().lower()
    if not HOST_LABEL.fullmatch(value):
        raise ValueError("must be a host name label: a-z, 0-9 and '-' (like acme)")
    return value


class PresetSettings(ConnectorSettings):
    """Keys every preset accepts besides its credentials."""

    api_base: str | None = Field(
        default=None, description="API address instead of the vendor's (a test server, a proxy)."
    )
    max_items: int = Field(
        default=3,
        ge=0,
        le=50,
        description="Latest items (deals, orders...) shown as numbered keys.",
    )
    formats: dict[str, FormatSpec] = Field(
        default_factory=dict,
        description="Field -> display format (money:eur, money:@currency, cents:usd, date, "
        "datetime); <list>.<field> formats that field of each item (deals.amount).",
    )

    FIELDS: ClassVar[tuple[str, ...]] = ()
    """The preset's top-level fields (set from its connector class)."""
    ITEM_LISTS: ClassVar[Mapping[str, Mapping[str, None]]] = {}
    """Its numbered item lists and each item's fields (set from its connector class)."""

    @field_validator("api_base")
    @classmethod
    def _check_api_base(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = URL(value)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parsed.query_string or parsed.fragment or "{" in value:
            raise ValueError("must be a plain base URL (no query, fragment or placeholder)")
        return value.rstrip("/")

    @field_validator("formats")
    @classmethod
    def _check_format_names(cls, value: dict[str, str]) -> dict[str, str]:
        top, items = split_formats(value)
        if cls.FIELDS:
            check_names(top, cls.FIELDS)
        for name, specs in items.items():
            if name not in cls.ITEM_LISTS:
                lists = ", ".join(sorted(cls.ITEM_LISTS)) or "none"
                raise ValueError(f"{name!r} is not a list of this preset ({lists})")
            check_names(specs, cls.ITEM_LISTS[name], f"fields of a {name} item")
        return value


def split_formats(specs: Mapping[str, str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """``formats`` split into top-level fields and, per item list, its items' fields."""
    top: dict[str, str] = {}
    items: dict[str, dict[str, str]] = {}
    for key, spec in specs.items():
        name, dot, field_name = key.partition(".")
        if dot:
            items.setdefault(name, {})[field_name] = spec
        else:
            top[key] = spec
    return top, items


PresetT = TypeVar("PresetT", bound=PresetSettings)


class PresetConnector(RestBase[PresetT]):
    """A rest connector whose plan comes from a few keys; ``SHAPE`` is its field list."""

    ITEM_LISTS: ClassVar[dict[str, dict[str, None]]] = {}
    """Numbered item lists (name -> one item's fields), for ``declared_shape``."""
    FIELDS: ClassVar[tuple[str, ...]] = ()
    """Top-level fields, for ``declared_shape`` (the README lists them too)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A preset's settings learn its field lists, to check ``formats`` at load time."""
        super().__init_subclass__(**kwargs)
        model = cls.__dict__.get("settings_model")
        if isinstance(model, type) and issubclass(model, PresetSettings):
            model.FIELDS = cls.FIELDS
            model.ITEM_LISTS = cls.ITEM_LISTS

    def __init__(self, name: str, settings: PresetT) -> None:
        super().__init__(name, settings)
        top, items = split_formats(settings.formats)
        self._formats = {**self._formats, **parse_formats(top)}
        self._item_formats: dict[str, dict[str, FieldFormat]] = {
            name: parse_formats(specs) for name, specs in items.items()
        }

    def _formatted(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The top-level fields, then each numbered item of a list, shown as ``formats`` says."""
        fields = super()._formatted(fields)
        for name, formats in self._item_formats.items():
            items = fields.get(name)
            if isinstance(items, dict):
                fields[name] = {
                    key: apply_formats(item, formats) if isinstance(item, dict) else item
                    for key, item in items.items()
                }
        return fields

    def base(self, default: str) -> str:
        """``api_base`` when set, else the vendor's address."""
        return self.settings.api_base or default

    def declared_shape(self) -> Mapping[str, Any] | None:
        """The documented fields, with ``max_items`` numbered items per list plus a count."""
        shape: dict[str, Any] = dict.fromkeys(self.FIELDS)
        for name, item in self.ITEM_LISTS.items():
            numbered: dict[str, Any] = {str(i): dict(item) for i in range(self.settings.max_items)}
            shape[name] = {**numbered, "count": None}
        return shape


def display_money(amount: Any, currency: Any) -> str | None:
    """``"150.0"`` and ``"USD"`` (major units, as most APIs give them) -> ``"$150.00"``."""
    if amount is None or not isinstance(currency, str) or not currency:
        return None
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    # money() takes minor units; its own rendering of one minor unit tells the exponent.
    probe = money(1, currency)
    digits = len(probe.split(".")[1].split()[0]) if "." in probe else 0
    return money(int((value * 10**digits).to_integral_value()), currency)


def from_epoch(value: Any) -> datetime | None:
    """UNIX seconds (Intercom's timestamps) as an aware datetime; None when not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def as_int(value: Any) -> int | None:
    """An integer from a number or a digit string (GraphQL's UnsignedInt64 is a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
