"""Keyed tasks: at most one task per key, shared by everyone who asks for that key meanwhile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("aggregator.service")

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class KeyedTasks(Generic[K, T]):
    """Runs ``work`` for a key unless a task for that key already runs; then that one is shared.

    Single-flight loads and background refreshes are two instances of this: a task is
    listed while it runs and forgotten when it ends, however it ends.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._running: dict[K, asyncio.Task[T]] = {}

    def start(self, key: K, work: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Task[T]:
        """The task running for ``key``, started from ``work()`` if there is none."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: K, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %s", self.name, type(task.exception()).__name__)

    def __contains__(self, key: object) -> bool:
        return key in self._running

    async def join(self) -> None:
        """Wait until the tasks running now have ended, however they end."""
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel every running task and wait until they have ended."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class TimerHandle(Protocol):
    """What a scheduler returns: something that can be cancelled (asyncio.TimerHandle)."""

    def cancel(self) -> None:
        """Do not run the callback."""


CallLater = Callable[[float, Callable[[], None]], TimerHandle]


class Debouncer(Generic[K]):
    """Calls ``action(key)`` once ``delay`` seconds pass without another ``poke(key)``.

    A burst of pokes for one key (Stripe sends several events for one change) ends in one
    call, ``delay`` after the last poke. ``call_later`` defaults to the running loop's
    (tests pass a fake scheduler).
    """

    def __init__(self, action: Callable[[K], None], call_later: CallLater | None = None) -> None:
        self._action = action
        self._call_later = call_later
        self._timers: dict[K, TimerHandle] = {}

    def poke(self, key: K, delay: float) -> None:
        """(Re)start the quiet period of ``key``."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        call_later = self._call_later or loop_call_later
        self._timers[key] = call_later(max(0.0, delay), lambda: self._fire(key))

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self._action(key)

    def __len__(self) -> int:
        return len(self._timers)

    def cancel(self) -> None:
        """Forget every pending call."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


def loop_call_later(delay: float, callback: Callable[[], None]) -> TimerHandle:
    """``call_later`` of the running event loop."""
    return asyncio.get_running_loop().call_later(delay, callback)
