"""Keep personal data and secrets out of logs, errors and command output."""

from __future__ import annotations

import re

_LABEL = re.compile(r"[^\W_](?:[\w-]{0,61}[^\W_])?")
_MAX_DOMAIN = 253


def mask_email(email: str) -> str:
    """``jane@example.com`` -> ``j***@example.com``; anything else -> ``***``.

    The domain is shown only when it is a plausible host name (letters, digits and
    inner hyphens in dot-separated labels): ``a@b.co;api_token=T`` -> ``a***@***``.
    """
    local, sep, domain = email.rpartition("@")
    if not sep or not local:
        return "***"
    first = local[0] if local[0].isalnum() else "*"
    return f"{first}***@{domain if _is_domain(domain) else '***'}"


def _is_domain(text: str) -> bool:
    labels = text.split(".")
    return (
        len(text) <= _MAX_DOMAIN
        and len(labels) >= 2
        and all(_LABEL.fullmatch(label) and "_" not in label for label in labels)
    )
