"""Exceptions whose type tells the caller what to do next."""

from __future__ import annotations


class AggregatorError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(AggregatorError):
    """The configuration cannot be used; the message names file, line and field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ConnectorError(AggregatorError):
    """A connector could not produce an answer; subclasses say whether to retry."""

    reason = "error"


class RetriableError(ConnectorError):
    """Worth another try later: 429, 5xx, timeouts, dropped connections.

    ``retry_after`` (seconds) is the upstream's own hint, when it gave one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnavailableError(RetriableError):
    """The upstream cannot be reached at all (connection refused, circuit open)."""

    reason = "unavailable"


class FatalError(ConnectorError):
    """Retrying will not help: bad credentials, bad request, broken configuration."""


class NotFoundError(ConnectorError):
    """The upstream does not know this customer: not a failure, just no fields."""
