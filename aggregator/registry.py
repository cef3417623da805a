"""Connector types by name, from the ``aggregator.connectors`` entry-point group.

Built-in types are registered in the same group (see pyproject.toml), so a
third-party type is found exactly like ``rest`` or ``stripe``. Each entry point is
imported on first use and the outcome is cached, failures included: a broken
plugin only matters to a config that names its type.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from aggregator.errors import ConfigError
from connectors.base import Connector, ConnectorSettings

GROUP = "aggregator.connectors"


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=GROUP):
        # The same distribution can be seen twice on sys.path; the first one wins.
        found.setdefault(entry_point.name, entry_point)
    return found


@functools.cache
def _load(name: str) -> type[Connector[Any]] | str:
    """The connector type registered as ``name``, or why it cannot be used."""
    entry_point = _entry_points().get(name)
    if entry_point is None:
        return "not registered"
    try:
        obj = entry_point.load()
    except Exception as exc:
        return f"importing {entry_point.value} failed: {type(exc).__name__}: {exc}"
    if not (isinstance(obj, type) and issubclass(obj, Connector)):
        return f"{entry_point.value} is not a subclass of connectors.base.Connector"
    model = getattr(obj, "settings_model", None)
    if not (isinstance(model, type) and issubclass(model, ConnectorSettings)):
        return f"{entry_point.value}.settings_model is not a ConnectorSettings subclass"
    return obj


def registered_names() -> list[str]:
    """Every name in the entry-point group, loadable or not, sorted."""
    return sorted(_entry_points())


def get_connector_type(
    name: str, types: Mapping[str, type[Connector[Any]]] | None = None
) -> type[Connector[Any]]:
    """The connector type called ``name``, from ``types`` or else the entry points.

    Raises ConfigError with one problem: why the type failed to load, or that it is
    unknown with the list of known types.
    """
    if types is not None:
        if name in types:
            return types[name]
        known = sorted(types)
    else:
        loaded = _load(name)
        if not isinstance(loaded, str):
            return loaded
        if name in _entry_points():
            raise ConfigError([f"connector type {name!r} cannot be loaded: {loaded}"])
        known = registered_names()
    listed = ", ".join(known) if known else "none registered"
    raise ConfigError([f"unknown connector type {name!r} (known types: {listed})"])
