"""Normalize and validate the email Groove sends.

The rule (also in the README): trim, then refuse an address that holds control or
invisible format characters or that Unicode NFKC normalization would change
(compatibility forms such as the KELVIN SIGN, fullwidth letters, ligatures, and
decomposed accents), then lower-case (and check the result the same way). Lower-casing
is the only way two spellings meet on one cache key: ``\u212aate@x.com`` is refused,
never read as ``kate@x.com``.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

MAX_EMAIL_LENGTH = 254
MAX_LOCAL_LENGTH = 64
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co"})
_ADDRESS = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f.]+(\.[^@\s\x00-\x1f\x7f.]+)+$")


class InvalidEmail(ValueError):
    """The email is missing, too long or not an address; the message says which."""


class Email(str):
    """A normalized email that also remembers how the caller wrote it.

    It *is* the normalized string (cache keys, single-flight, SQL parameters all use
    that); ``as_sent`` is the address as Groove sent it, trimmed, for upstreams that
    match emails case-sensitively (Stripe's ``GET /v1/customers?email=``).
    """

    as_sent: str

    def __new__(cls, normalized: str, as_sent: str | None = None) -> Email:
        """``normalized`` as the value; ``as_sent`` defaults to it."""
        email = super().__new__(cls, normalized)
        email.as_sent = normalized if as_sent is None else as_sent
        return email


def as_sent(email: str) -> str:
    """The address as the caller wrote it when known, else ``email`` itself."""
    return email.as_sent if isinstance(email, Email) else email


def parse_email(raw: str | None) -> Email:
    """Normalize and validate ``raw`` (InvalidEmail if unusable), keeping how it was written."""
    return remember_as_sent(normalize_email(raw), raw)


def remember_as_sent(normalized: str, raw: str | None) -> Email:
    """``normalized`` (the output of normalize_email for ``raw``) carrying ``raw`` as written."""
    written = _fix_plus((raw or "").strip())
    # Only a spelling of the same address is kept: anything else is not what was looked up.
    return Email(normalized, written if written.lower() == normalized else normalized)


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


def _fix_plus(email: str) -> str:
    """A space in the local part was a ``+`` the caller forgot to percent-encode."""
    local, sep, domain = email.rpartition("@")
    if sep and " " in local:
        return local.replace(" ", "+") + "@" + domain
    return email


def _normalize(raw: str) -> str:
    email = raw.strip()
    if not email:
        raise InvalidEmail("the email parameter is empty")
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidEmail(f"the email is longer than {MAX_EMAIL_LENGTH} characters")
    if not email.isascii():
        _check_unicode(email)
        email = email.lower()
        _check_unicode(email)  # lower() of a plain letter may be a combining sequence
    else:
        email = email.lower()
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidEmail(f"the email is longer than {MAX_EMAIL_LENGTH} characters")
    email = _fix_plus(email)
    local = email.rpartition("@")[0]
    if not _ADDRESS.match(email) or len(local) > MAX_LOCAL_LENGTH:
        raise InvalidEmail("the email is not a valid address")
    return email


def _check_unicode(email: str) -> None:
    """InvalidEmail unless ``email`` is plain text that NFKC leaves as it is."""
    if any(unicodedata.category(char) in _HIDDEN_CATEGORIES for char in email):
        raise InvalidEmail("the email contains control or invisible characters")
    if unicodedata.normalize("NFKC", email) != email:
        raise InvalidEmail(
            "the email is not in Unicode normal form NFKC (it holds a character such as "
            "the Kelvin sign, a fullwidth letter or a separate accent): write it plainly"
        )
