"""What Groove does with our answer: fill its own keys, render the Liquid template."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from liquid import Environment

from aggregator.merge import RESERVED_KEYS


class _GrooveEnvironment(Environment):
    """Standard Liquid with limits, so a template cannot stall the event loop."""

    loop_iteration_limit = 10_000
    output_stream_limit = 1_000_000
    context_depth_limit = 30


_ENV = _GrooveEnvironment()


def groove_keys(email: str) -> dict[str, str]:
    """The keys Groove always sets itself, derived from the email as a stand-in for its data."""
    local = email.partition("@")[0]
    words = [w.capitalize() for w in local.replace("_", ".").replace("-", ".").split(".") if w]
    first = words[0] if words else local
    last = " ".join(words[1:])
    full = " ".join(words) or local
    keys = {
        "email": email,
        "name": full,
        "first_name": first,
        "last_name": last,
        "full_name": full,
        "status": "active",
    }
    assert set(keys) == RESERVED_KEYS
    return keys


def render_sidebar(template: str, profile: Mapping[str, Any], email: str) -> str:
    """Render a Custom Profile template as Groove would: our keys, overridden by Groove's."""
    context = {**profile, **groove_keys(email)}
    return _ENV.from_string(template).render(**context)
