"""Keep personal data and secrets out of logs, errors and command output."""

from __future__ import annotations


def mask_email(email: str) -> str:
    """``jane@example.com`` -> ``j***@example.com``; anything else -> ``***``."""
    local, sep, domain = email.rpartition("@")
    if not sep or not local:
        return "***"
    return f"{local[0]}***@{domain}"
