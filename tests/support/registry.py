"""Connector types installed on the fly: tests register entry points without installing."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import EntryPoint

import pytest

from aggregator import registry


def clear_registry_cache() -> None:
    """Forget what the registry found and loaded."""
    registry._entry_points.cache_clear()
    registry._load.cache_clear()


def loadable_types() -> list[str]:
    """The names of the registered connector types that load."""
    return [
        name for name in registry.registered_names() if not isinstance(registry._load(name), str)
    ]


@contextmanager
def entry_points(monkeypatch: pytest.MonkeyPatch, points: Mapping[str, str]) -> Iterator[None]:
    """Only these connector types are registered (name -> "module:Class") while inside."""
    found = {name: EntryPoint(name, value, registry.GROUP) for name, value in points.items()}
    clear_registry_cache()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(registry, "_entry_points", lambda: found)
            yield
    finally:
        clear_registry_cache()
