"""Small building blocks that keep a failing upstream from hurting the proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

CircuitState = Literal["closed", "open", "half_open"]
Clock = Callable[[], float]


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; lets one probe through after ``reset``."""

    def __init__(self, threshold: int, reset: float, *, clock: Clock = time.monotonic) -> None:
        self.threshold = threshold
        self.reset = reset
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> CircuitState:
        """The breaker's state as an operator would name it."""
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.reset:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """True when a call may go upstream now (closed, or the single half-open probe)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        """Close the breaker after an answer from upstream."""
        self.failures = 0
        self.opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        """Count a failure; open (or re-open) the breaker at the threshold."""
        self.failures += 1
        self._probing = False
        if self.threshold > 0 and self.failures >= self.threshold:
            self.opened_at = self.clock()


class RateLimiter:
    """A token bucket: at most ``rate`` calls a second, bursts up to ``burst``."""

    def __init__(
        self, rate: float, burst: float | None = None, *, clock: Clock = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.clock = clock
        self.tokens = self.capacity
        self.updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def try_acquire(self) -> bool:
        """Take a token if one is free now, without waiting."""
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    async def acquire(self) -> None:
        """Wait until a token is free, then take it (cancel the wait to give up)."""
        async with self._lock:
            self._refill()
            while self.tokens < 1:
                await asyncio.sleep((1 - self.tokens) / self.rate)
                self._refill()
            self.tokens -= 1
