"""Which keys two connectors can both produce, and who keeps each: for ``aggregator check``.

Connectors that share a prefix (or use ``""``) coalesce sources on purpose; the merge's
rule (first listed keeps the key, the other's becomes ``<connector name>_<key>``) then
decides. This module runs that very rule (``merge_profile``) over what each connector
declares it will produce (``Connector.declared_shape``), so the report cannot drift from
what the merge does. Connectors that cannot tell before a fetch are listed as unknown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aggregator.merge import RESERVED_KEYS, Source, flatten, merge_profile, sanitize_key

_SEP = "\x1f"


def _marked(shape: Any, owner: str, path: str, copies: int) -> Any:
    """The shape with each leaf replaced by a marker naming its owner and path."""
    if isinstance(shape, Mapping):
        return {k: _marked(v, owner, f"{path}{_SEP}{k}", copies) for k, v in shape.items()}
    if isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], Mapping):
        return [_marked(shape[0], owner, f"{path}{_SEP}{i}", copies) for i in range(copies)]
    return owner + path


def collision_report(
    sources: Sequence[Source],
    shapes: Mapping[str, Mapping[str, Any] | None],
    *,
    max_list_items: int,
) -> list[str]:
    """Lines naming each key that is renamed because another connector (or Groove) has it."""
    marked: dict[str, dict[str, Any]] = {}
    natural: dict[str, str] = {}  # marker -> key the connector would get on its own
    for source in sources:
        shape = shapes.get(source.name)
        if shape is None:
            continue
        copies = max(1, max_list_items)
        marked[source.name] = _marked(shape, source.name, "", copies)
        for key, marker in flatten(marked[source.name], max_list_items=copies).items():
            if isinstance(marker, str) and _SEP in marker:  # not a list's count
                natural[marker] = sanitize_key(f"{source.prefix}_{key}")
    known = [s for s in sources if s.name in marked]
    merged = merge_profile(known, marked, meta={}, max_list_items=max(1, max_list_items))
    owner_of = {final: str(marker).split(_SEP, 1)[0] for final, marker in merged.items()}
    final_of = {marker: final for final, marker in merged.items() if isinstance(marker, str)}
    lines: list[str] = []
    for marker, key in natural.items():
        final = final_of.get(marker)
        if final is None or final == key:
            continue
        loser = marker.split(_SEP, 1)[0]
        if key in RESERVED_KEYS:
            lines.append(f"  {key}: Groove's own key; {loser}'s is emitted as {final}")
        else:
            lines.append(f"  {key}: {owner_of.get(key, '?')} keeps it; {loser}'s is {final}")
    report: list[str] = []
    if lines:
        report = ["keys that can collide (the connector listed first keeps the key):", *lines]
    unknown = [s.name for s in sources if s.name not in marked]
    shared = {s.prefix for s in sources}
    if unknown and len(shared) < len(sources):
        report.append(
            "keys known only after a fetch (collisions not checked): " + ", ".join(unknown)
        )
    return report
