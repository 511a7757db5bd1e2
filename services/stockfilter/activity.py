"""Which items have work for the reconciler: those with admissions lately.

A gateway marks an item before it reserves a unit of it (at most once a second
per item and gateway); the reconciler visits only marked items and drops an
item once it has no reservation record, no drift and no mark for QUIET_S. So a
pass costs what the sale costs, not what the catalogue holds: 100,000 idle
items cost one empty scan.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field

from services.stockfilter.autopipe import AutoPipeline
from services.stockfilter.client import RedisClient, redis_errors
from services.stockfilter.keys import active_items_key, sweeping_key, swept_key
from services.stockfilter.scripts import register

# A gateway re-marks an item it keeps selling this often...
MARK_EVERY_S = 1.0
# ...and the reconciler forgets an item only after this long without a mark, so
# a gateway stalled between its mark and its reserve for less than this is covered.
QUIET_S = 30.0
# Bound on the marks one gateway remembers, so unknown ids cannot grow it forever.
MEMO_MAX = 200_000


@dataclass
class ActiveItems:
    redis: RedisClient
    pipe: AutoPipeline
    quiet_s: float = QUIET_S
    _marked_at: dict[str, float] = field(default_factory=dict)
    _inflight: dict[str, asyncio.Future[None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._mark = register(self.redis, "mark_active.lua")
        self._forget = register(self.redis, "forget_quiet.lua")

    async def mark(self, item_id: str, force: bool = False) -> None:
        """Called before a reserve: the reconciler then sees the reservation record.

        Requests that arrive while a mark of the item is on its way wait for that
        one (its failure is theirs too) instead of sending hundreds more."""
        last = self._marked_at.get(item_id)
        if not force and last is not None and time.monotonic() - last < MARK_EVERY_S:
            return
        inflight = self._inflight.get(item_id)
        if inflight is None or force:
            inflight = asyncio.ensure_future(self._mark_now(item_id))
            self._inflight[item_id] = inflight
            inflight.add_done_callback(functools.partial(self._landed, item_id))
        await asyncio.shield(inflight)

    async def _mark_now(self, item_id: str) -> None:
        now = time.monotonic()
        async with redis_errors():
            await self.pipe.script(self._mark, [active_items_key()], [item_id], idempotent=True)
        if len(self._marked_at) >= MEMO_MAX:
            self._marked_at.clear()
        self._marked_at[item_id] = now

    def _landed(self, item_id: str, mark: asyncio.Future[None]) -> None:
        if self._inflight.get(item_id) is mark:
            del self._inflight[item_id]
        if not mark.cancelled():
            mark.exception()  # retrieved: each waiter got it already

    def stale_mark(self, item_id: str) -> bool:
        """The mark this gateway relies on is old enough that the reconciler may
        have dropped the item meanwhile (a long pause between mark and reserve)."""
        last = self._marked_at.get(item_id)
        return last is None or time.monotonic() - last > self.quiet_s / 2

    async def scan(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One step of a full pass over the active items (ZSCAN: every item that
        stays in the set through a whole pass is returned at least once)."""
        async with redis_errors():
            next_cursor, pairs = await self.redis.zscan(active_items_key(), cursor, count=count)
        return int(next_cursor), [_text(pair[0]) for pair in pairs]

    async def forget_if_quiet(self, item_id: str) -> bool:
        async with redis_errors():
            removed = await self.pipe.script(
                self._forget, [active_items_key()], [item_id, self.quiet_s]
            )
        return int(removed) == 1

    async def needs_sweep(self) -> bool:
        """Redis lost its data (or never had it): every item must be visited once,
        for the set of active items was lost with it."""
        async with redis_errors():
            return not await self.redis.exists(swept_key())

    async def sweep_started(self) -> None:
        async with redis_errors():
            await self.redis.set(sweeping_key(), "1")

    async def sweep_intact(self) -> bool:
        """False when Redis lost its data again during the sweep: start over."""
        async with redis_errors():
            return bool(await self.redis.exists(sweeping_key()))

    async def sweep_done(self) -> None:
        async with redis_errors():
            await self.redis.set(swept_key(), "1")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
