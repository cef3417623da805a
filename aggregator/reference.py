"""The configuration reference, generated from the config models.

Run ``python -m aggregator.reference``; the README embeds its output between markers
and a test keeps the two identical.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from aggregator.config import (
    AuthSettings,
    CacheSettings,
    LoggingSettings,
    MergeSettings,
    ServerSettings,
    WebhookSettings,
)
from aggregator.registry import get_connector_type
from connectors.base import ConnectorSettings

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("server", ServerSettings),
    ("auth", AuthSettings),
    ("cache", CacheSettings),
    ("merge", MergeSettings),
    ("logging", LoggingSettings),
    ("webhooks", WebhookSettings),
]
BUILT_IN_TYPES = (
    "stripe",
    "postgres",
    "rest",
    "hubspot",
    "salesforce",
    "intercom",
    "shopify",
    "zendesk",
    "pipedrive",
)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return " \\| ".join(repr(arg).replace("'", '"') for arg in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _rows(model: type[BaseModel], skip: frozenset[str] = frozenset()) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        if name in skip or field.exclude:
            continue
        description = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `{name}` | {_type_name(field.annotation)} | `{_default(field)}` | {description} |"
        )
    return rows


def _table(rows: list[str]) -> list[str]:
    return ["| key | type | default | meaning |", "|---|---|---|---|", *rows]


def config_reference() -> str:
    """Markdown tables of every config section and every built-in connector type."""
    lines: list[str] = []
    for section, model in SECTIONS:
        lines += [f"#### `{section}`", "", *_table(_rows(model)), ""]
    lines += [
        "#### every connector (`connectors.<name>`)",
        "",
        *_table(_rows(ConnectorSettings)),
        "",
    ]
    base = frozenset(ConnectorSettings.model_fields)
    for type_name in BUILT_IN_TYPES:
        model = get_connector_type(type_name).settings_model
        lines += [f"#### `type: {type_name}`", ""]
        lines += _table(_rows(model, skip=base - _overridden(model)))
        lines.append("")
        for path, nested in _nested(model):
            lines += [f"#### `type: {type_name}`: `{path}`", "", *_table(_rows(nested)), ""]
    return "\n".join(lines).rstrip() + "\n"


def _models_in(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """Models a field holds: directly, optionally, or as dict values (``.<name>``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is dict and len(args) == 2:
        return [(".<name>", model) for _, model in _models_in(args[1])]
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return [found for arg in args for found in _models_in(arg)]
    return []


def _nested(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """Every nested settings model under ``model`` once, with the key paths that hold it."""
    paths: dict[type[BaseModel], list[str]] = {}

    def walk(current: type[BaseModel], at: str) -> None:
        for name, field in current.model_fields.items():
            for suffix, inner in _models_in(field.annotation):
                path = f"{at}{name}{suffix}"
                if inner not in paths:
                    paths[inner] = [path]
                    walk(inner, f"{path}.")
                else:
                    paths[inner].append(path)

    walk(model, prefix)
    return [("`, `".join(found), inner) for inner, found in paths.items()]


def _overridden(model: type[ConnectorSettings]) -> frozenset[str]:
    """Base keys whose default the connector type changes (shown in its own table)."""
    changed = set()
    for name, field in ConnectorSettings.model_fields.items():
        own = model.model_fields[name]
        if name != "type" and _default(own) != _default(field):
            changed.add(name)
    return frozenset(changed)


START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def embed(document: str) -> str:
    """``document`` with the text between the reference markers replaced by the reference."""
    head, start, rest = document.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"markers {START} / {END} not found")
    return f"{head}{START}\n{config_reference()}{END}{tail}"


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        path = Path(sys.argv[2])
        path.write_text(embed(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(config_reference(), end="")
