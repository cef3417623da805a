"""Normalize and validate the email Groove sends."""

from __future__ import annotations

import re
from functools import lru_cache

MAX_EMAIL_LENGTH = 254
MAX_LOCAL_LENGTH = 64
_ADDRESS = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f.]+(\.[^@\s\x00-\x1f\x7f.]+)+$")


class InvalidEmail(ValueError):
    """The email is missing, too long or not an address; the message says which."""


def normalize_email(raw: str | None) -> str:
    """Trim and lower-case; a space in the local part was a literal ``+`` the caller forgot
    to percent-encode. Raise InvalidEmail when the result is not a plausible address."""
    if raw is None:
        raise InvalidEmail("the email parameter is missing")
    if len(raw) <= _CACHED_LENGTH:
        return _normalize_cached(raw)
    return _normalize(raw)


_CACHED_LENGTH = 300


@lru_cache(maxsize=4096)
def _normalize_cached(raw: str) -> str:
    # Only valid addresses are remembered: a raised InvalidEmail is never cached.
    return _normalize(raw)


def _normalize(raw: str) -> str:
    email = raw.strip().lower()
    if not email:
        raise InvalidEmail("the email parameter is empty")
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidEmail(f"the email is longer than {MAX_EMAIL_LENGTH} characters")
    local, sep, domain = email.rpartition("@")
    if sep and " " in local:
        email = local.replace(" ", "+") + "@" + domain
        local = email.rpartition("@")[0]
    if not _ADDRESS.match(email) or len(local) > MAX_LOCAL_LENGTH:
        raise InvalidEmail("the email is not a valid address")
    return email
