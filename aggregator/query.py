"""The query strings already accepted: a cached hit skips the token check and email parsing.

A profile request is accepted when its ``api_token`` is one of the runtime's tokens and its
``email`` is a valid address. Groove asks again and again with the same query string for
the same customer, so the runtime remembers, per raw query string, the email it named; the
next request with those exact bytes is known to be accepted without parsing the query,
comparing tokens or normalizing the email again.

Only accepted strings are kept, so a wrong token is always checked in constant time, and a
lookup here compares a keyed (randomized) hash before any bytes: it tells a caller nothing
about the tokens. The table belongs to one runtime: a reload that changes the tokens starts
a new, empty one.
"""

from __future__ import annotations

from aggregator.emails import Email

DEFAULT_LIMIT = 10_000


class AcceptedQueries:
    """Raw query string -> the accepted request's email, at most ``limit`` of them."""

    __slots__ = ("_emails", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._emails: dict[str, Email] = {}

    def __len__(self) -> int:
        return len(self._emails)

    def get(self, raw_query: str) -> Email | None:
        """The email of an accepted query string, or None when it was not seen (or forgotten)."""
        return self._emails.get(raw_query)

    def add(self, raw_query: str, email: Email) -> None:
        """Remember an accepted query string; a full table is emptied first (bounded memory)."""
        if len(self._emails) >= self.limit:
            self._emails.clear()
        self._emails[raw_query] = email
