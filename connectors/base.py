"""The connector API: ``fetch()`` does the shared work, a connector type writes ``_fetch()``.

Timeouts, retries within the deadline, the circuit breaker, concurrency and rate
limits, timing and the mapping of exceptions to a short reason all live here, once.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from aggregator.errors import (
    ConnectorError,
    FatalError,
    NotFoundError,
    RetriableError,
    UnavailableError,
)
from aggregator.resilience import CircuitBreaker, RateLimiter

log = logging.getLogger("aggregator.connector")

Status = Literal["ok", "not_found", "timeout", "unavailable", "error"]
FAILED: frozenset[str] = frozenset({"timeout", "unavailable", "error"})


class ConnectorSettings(BaseModel):
    """Keys every connector accepts; a connector type subclasses this with its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="Connector type: stripe, postgres, rest or a plugin's.")
    enabled: bool = Field(default=True, description="false keeps it configured but unused.")
    prefix: str | None = Field(
        default=None, description="Key prefix; defaults to the connector's name."
    )
    timeout: float = Field(
        default=2.0, gt=0, description="Seconds this connector may take per profile."
    )
    retries: int = Field(default=1, ge=0, le=5, description="Extra tries of a retriable error.")
    max_concurrency: int | None = Field(default=None, ge=1, description="Calls in flight at most.")
    rate_limit: float | None = Field(default=None, gt=0, description="Calls per second at most.")
    circuit_failures: int = Field(
        default=5, ge=0, description="Failures in a row that open the circuit."
    )
    circuit_reset: float = Field(
        default=30.0, gt=0, description="Seconds before a half-open probe."
    )


SettingsT = TypeVar("SettingsT", bound=ConnectorSettings)

_BUDGET_END: ContextVar[float | None] = ContextVar("connector_budget_end", default=None)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """How one further call of a fetch went (a rest connector's ``then`` step)."""

    status: Status
    elapsed: float
    detail: str = ""

    @property
    def failed(self) -> bool:
        """True for timeout, unavailable and error."""
        return self.status in FAILED


class Answer(dict[str, Any]):
    """The fields ``_fetch`` returns, with the outcome of each further call it made."""

    def __init__(
        self, fields: Mapping[str, Any], steps: Mapping[str, StepOutcome] | None = None
    ) -> None:
        super().__init__(fields)
        self.steps: dict[str, StepOutcome] = dict(steps or {})


@dataclass(slots=True)
class FetchOutcome:
    """What one connector produced for one email, with how it went."""

    name: str
    status: Status
    fields: Mapping[str, Any] | None
    elapsed: float
    attempts: int = 1
    detail: str = ""
    steps: Mapping[str, StepOutcome] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """True for timeout, unavailable and error; an unknown customer is not a failure."""
        return self.status in FAILED

    @property
    def partial(self) -> bool:
        """True when the first call answered but a further call (step) failed."""
        return any(step.failed for step in self.steps.values())


def _is_connection_failure(exc: BaseException) -> bool:
    return isinstance(
        exc, (aiohttp.ClientConnectorError, ConnectionRefusedError, ConnectionResetError)
    )


class Connector(abc.ABC, Generic[SettingsT]):
    """Base class of every connector type.

    Subclasses set ``settings_model`` and implement ``_fetch``; they may override
    ``open``/``close`` for pools and clients and ``check`` for a deeper probe.
    """

    settings_model: ClassVar[type[ConnectorSettings]] = ConnectorSettings
    # True: the connector applies ``retries``, ``rate_limit`` and ``max_concurrency`` to
    # each upstream call itself, so ``fetch`` runs ``_fetch`` once, unthrottled.
    manages_calls: ClassVar[bool] = False

    def __init__(self, name: str, settings: SettingsT) -> None:
        self.name = name
        self.settings = settings
        self.circuit = CircuitBreaker(settings.circuit_failures, settings.circuit_reset)
        per_fetch = not self.manages_calls
        self._semaphore = (
            asyncio.Semaphore(settings.max_concurrency)
            if per_fetch and settings.max_concurrency
            else None
        )
        self._limiter = (
            RateLimiter(settings.rate_limit) if per_fetch and settings.rate_limit else None
        )

    @property
    def prefix(self) -> str:
        """The prefix of this connector's keys (its name unless configured)."""
        return self.name if self.settings.prefix is None else self.settings.prefix

    async def open(self, session: aiohttp.ClientSession) -> None:
        """Open pools or clients; ``session`` is the app's shared HTTP session."""

    async def close(self) -> None:
        """Release what ``open`` acquired."""

    async def check(self) -> None:
        """Probe the upstream for ``aggregator check``; raise a ConnectorError on a problem."""
        await self._fetch("aggregator-check@example.invalid")

    def declared_shape(self) -> Mapping[str, Any] | None:
        """The answer's shape as far as the config tells, for ``aggregator check``.

        Nested mappings with None for each scalar and ``[shape]`` for a list of objects;
        None when nothing can be known before a fetch. Used to list the keys that can
        collide with another connector's.
        """
        return None

    @staticmethod
    def budget_end() -> float | None:
        """Loop time by which the running fetch must be done (None outside ``fetch``)."""
        return _BUDGET_END.get()

    async def _pace(self) -> None:
        """Wait for the rate limit before a further call inside one fetch."""
        if self._limiter is not None:
            await self._limiter.acquire()

    @abc.abstractmethod
    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        """Return the customer's fields (nested is fine), or None for an unknown customer."""

    async def fetch(self, email: str, deadline: float | None = None) -> FetchOutcome:
        """Fetch under this connector's timeout and the caller's deadline; never raises."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        budget_end = started + self.settings.timeout
        if deadline is not None:
            budget_end = min(budget_end, deadline)
        if not self.circuit.allow():
            return FetchOutcome(self.name, "unavailable", None, 0.0, 0, "circuit open")
        attempts = 0
        while True:
            attempts += 1
            marker = _BUDGET_END.set(budget_end)
            try:
                async with asyncio.timeout_at(budget_end):
                    fields = await self._guarded_fetch(email)
            except NotFoundError:
                self.circuit.record_success()
                return self._outcome("not_found", None, started, attempts)
            except TimeoutError:
                self.circuit.record_failure()
                return self._outcome("timeout", None, started, attempts, "timed out")
            except RetriableError as exc:
                pause = self._backoff(attempts, exc.retry_after)
                retry = not self.manages_calls and attempts <= self.settings.retries
                if retry and loop.time() + pause < budget_end:
                    await asyncio.sleep(pause)
                    continue
                self.circuit.record_failure()
                reason: Status = "unavailable" if isinstance(exc, UnavailableError) else "error"
                return self._outcome(reason, None, started, attempts, type(exc).__name__)
            except (FatalError, ConnectorError) as exc:
                self.circuit.record_failure()
                return self._outcome("error", None, started, attempts, type(exc).__name__)
            except Exception as exc:
                self.circuit.record_failure()
                if _is_connection_failure(exc):
                    return self._outcome("unavailable", None, started, attempts, "unreachable")
                log.warning("connector %s raised %s", self.name, type(exc).__name__)
                return self._outcome("error", None, started, attempts, type(exc).__name__)
            finally:
                _BUDGET_END.reset(marker)
            self.circuit.record_success()
            if fields is None:
                return self._outcome("not_found", None, started, attempts)
            if not isinstance(fields, Mapping):
                return self._outcome("error", None, started, attempts, "not a mapping")
            outcome = self._outcome("ok", fields, started, attempts)
            if isinstance(fields, Answer):
                outcome.steps = fields.steps
            return outcome

    async def _guarded_fetch(self, email: str) -> Mapping[str, Any] | None:
        if self._limiter is not None:
            await self._limiter.acquire()
        if self._semaphore is None:
            return await self._fetch(email)
        async with self._semaphore:
            return await self._fetch(email)

    @staticmethod
    def _backoff(attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return max(0.0, retry_after)
        base: float = min(1.0, 0.05 * 2.0 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)

    def _outcome(
        self,
        status: Status,
        fields: Mapping[str, Any] | None,
        started: float,
        attempts: int,
        detail: str = "",
    ) -> FetchOutcome:
        elapsed = asyncio.get_running_loop().time() - started
        return FetchOutcome(self.name, status, fields, elapsed, attempts, detail)
