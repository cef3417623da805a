"""Keyed tasks: at most one task per key, shared by everyone who asks for that key meanwhile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

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
