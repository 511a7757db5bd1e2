"""Waking result waiters on Postgres NOTIFY, with one shared listening connection.

Waiters never hold a pooled connection while they wait; if the listener is
down (Postgres restarting), waiters fall back to a slow re-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import asyncpg

from services.errors import FlashsaleError
from services.reconnect import listening
from services.store.db import CONNECTION_ERRORS
from services.store.purchases import RESULTS_CHANNEL

log = logging.getLogger(__name__)

RECONNECT_S = 1.0
HEARTBEAT_S = 5.0
HEARTBEAT_TIMEOUT_S = 2.0
# Long-polls one user may hold at once on one gateway.
MAX_WAITS_PER_OWNER = 32


class TooManyWaitsError(FlashsaleError):
    """One owner already holds as many waits as it may."""


class ResultWaiters:
    """Waiters wake on a notification; while the listener is down they must poll.

    `listening` changes wake every waiter: after an outage a notification may have
    been missed, and a waiter that waits for notifications must learn to poll.
    """

    def __init__(self, max_per_owner: int = MAX_WAITS_PER_OWNER) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}
        self._per_owner: dict[str, int] = {}
        self.max_per_owner = max_per_owner
        self.listening = False

    def notify(self, purchase_ids: list[str]) -> None:
        for purchase_id in purchase_ids:
            for event in self._events.get(purchase_id, ()):
                event.set()

    def set_listening(self, listening: bool) -> None:
        self.listening = listening
        for events in self._events.values():
            for event in events:
                event.set()

    @contextlib.contextmanager
    def watch(self, purchase_id: str, owner: str = "") -> Iterator[asyncio.Event]:
        held = self._per_owner.get(owner, 0)
        if held >= self.max_per_owner:
            raise TooManyWaitsError(f"{held} waits are open already")
        self._per_owner[owner] = held + 1
        event = asyncio.Event()
        self._events.setdefault(purchase_id, set()).add(event)
        try:
            yield event
        finally:
            self._release(purchase_id, owner, event)

    def _release(self, purchase_id: str, owner: str, event: asyncio.Event) -> None:
        events = self._events.get(purchase_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[purchase_id]
        left = self._per_owner.get(owner, 1) - 1
        if left > 0:
            self._per_owner[owner] = left
        else:
            self._per_owner.pop(owner, None)

    @property
    def watching(self) -> int:
        return len(self._events)


async def _listen_once(url: str, waiters: ResultWaiters, stop: asyncio.Event) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    lost = asyncio.Event()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        waiters.notify(str(payload).split(","))

    conn.add_termination_listener(lambda _conn: lost.set())
    try:
        await conn.add_listener(RESULTS_CHANNEL, on_notify)
        waiters.set_listening(True)
        while True:
            watchers = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
            done, pending = await asyncio.wait(
                watchers, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            if done:
                return
            # A half-open connection never ends by itself: waiters trusting it
            # would wait out their whole time for notifications that never come.
            await conn.fetchval("SELECT 1", timeout=HEARTBEAT_TIMEOUT_S)
    finally:
        waiters.set_listening(False)
        with contextlib.suppress(*CONNECTION_ERRORS):
            await conn.close(timeout=2)


@contextlib.asynccontextmanager
async def result_listener(url: str) -> AsyncIterator[ResultWaiters]:
    waiters = ResultWaiters()

    async def listen_once(stop: asyncio.Event) -> None:
        await _listen_once(url, waiters, stop)

    async with listening(listen_once, CONNECTION_ERRORS, "result listener", log, RECONNECT_S):
        yield waiters
