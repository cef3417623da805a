"""A clock that moves only when told, a scheduler on it, and a connector whose every answer
a test scripts.

They drive the store, the service and the breakers directly: policy (fresh, refresh-ahead,
stale, expired, purged, single-flight, circuits) is tested by moving the clock, never by
sleeping.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp

from aggregator.config import Settings
from aggregator.errors import UnavailableError
from aggregator.runtime import Runtime
from aggregator.store import ProfileStore
from connectors.base import Connector, ConnectorSettings

START = 1_800_000_000.0


class FakeClock:
    """Epoch seconds that stand still until ``advance``."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@dataclass
class Timer:
    """One scheduled call of the fake scheduler."""

    at: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeScheduler:
    """``call_later`` on a fake clock that moves only when told (and moves it)."""

    clock: FakeClock = field(default_factory=FakeClock)
    timers: list[Timer] = field(default_factory=list)

    @property
    def now(self) -> float:
        return self.clock()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move on, running every due timer that was not cancelled, in time order."""
        self.clock.advance(seconds)
        for timer in sorted(self.timers, key=lambda t: t.at):
            if timer.at <= self.now and not timer.cancelled:
                timer.cancelled = True
                timer.callback()

    @property
    def pending(self) -> int:
        return sum(not t.cancelled for t in self.timers)


class ScriptedConnector(Connector[ConnectorSettings]):
    """Answers from ``answers`` (email -> fields); fails while ``failing``; counts calls.

    ``gate``, when set, holds every fetch until the test opens it; ``seen`` keeps the email
    objects exactly as they were passed in; ``events`` logs opens and closes in order.
    """

    settings_model: ClassVar[type[ConnectorSettings]] = ConnectorSettings

    def __init__(
        self,
        name: str,
        settings: ConnectorSettings | None = None,
        *,
        answers: Mapping[str, Mapping[str, Any]] | None = None,
        events: list[str] | None = None,
    ) -> None:
        super().__init__(
            name, settings or ConnectorSettings(type="scripted", retries=0, circuit_failures=0)
        )
        self.answers: dict[str, Mapping[str, Any]] = dict(answers or {})
        self.failing = False
        self.gate: asyncio.Event | None = None
        self.calls: Counter[str] = Counter()
        self.seen: list[str] = []
        self.open_error: Exception | None = None
        self.opened = 0
        self.closed = 0
        self.events = events if events is not None else []

    async def open(self, session: aiohttp.ClientSession) -> None:
        """Count, and fail if told to."""
        if self.open_error is not None:
            raise self.open_error
        self.opened += 1
        self.events.append(f"open {self.name}")

    async def close(self) -> None:
        """Count."""
        self.closed += 1
        self.events.append(f"close {self.name}")

    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        self.calls[email] += 1
        self.seen.append(email)
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise UnavailableError("scripted failure")
        return self.answers.get(email)


def runtime_for(
    settings: Settings,
    connectors: tuple[Connector[Any], ...],
    store: ProfileStore | None = None,
) -> Runtime:
    """A Runtime of hand-made parts: ``settings`` for the policy, these connectors, this store."""
    tokens = tuple(t.get_secret_value().encode() for t in settings.auth.api_tokens)
    if store is None:
        store = ProfileStore(settings.cache, namespace="unit")
    return Runtime(settings, connectors, store, tokens)
