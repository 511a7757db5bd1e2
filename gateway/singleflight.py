"""One build at a time: callers arriving while a build runs share its result.

Public views (the dashboard, readiness, an item) are cheap to answer and costly
to build: without this, every request arriving while a view is stale ran a build
of its own (300 concurrent GET /dashboard.json: 300 builds, each with Postgres
queries and a broker round trip).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, build: Callable[[], Awaitable[V]]) -> V:
        """`build()`'s result, shared with every caller of the same key meanwhile.

        The build runs in a task of its own: a caller that goes away (its client
        hung up) does not cancel it for the others."""
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(build())
            self._running[key] = running
            running.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(running)

    def _finished(self, key: K, done: asyncio.Future[V]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved: a build nobody waits for any more logs nothing

    @property
    def running(self) -> int:
        return len(self._running)


class CachedView(Generic[V]):
    """A value rebuilt at most once per `max_age_s`, by one build at a time."""

    def __init__(self, build: Callable[[], Awaitable[V]], max_age_s: float) -> None:
        self.build = build
        self.max_age_s = max_age_s
        self._value: V | None = None
        self._built_at = 0.0
        self._flight: SingleFlight[None, V] = SingleFlight()

    async def get(self) -> V:
        if self._value is not None and time.monotonic() - self._built_at < self.max_age_s:
            return self._value
        return await self._flight.run(None, self._rebuild)

    async def _rebuild(self) -> V:
        value = await self.build()
        self._value, self._built_at = value, time.monotonic()
        return value
