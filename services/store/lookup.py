"""Looking purchases up by id for many concurrent requests in one query.

A retry whose idempotency record Redis forgot must still get its purchase id
(api.md), so a gateway asks Postgres before it refuses a purchase (sold out,
rate limited, outside the window, over the limit...). In a sold-out storm that
is every request: the lookups of one event-loop turn share one `= ANY($1)` query
instead of one query each.
"""

from __future__ import annotations

import asyncio

import asyncpg

from services.store.db import database_errors
from services.store.purchases import PurchaseRow, row_to_purchase
from services.store.queries import query

MAX_BATCH = 1000


class PurchaseLookup:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._waiting: dict[str, list[asyncio.Future[PurchaseRow | None]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def find(self, purchase_id: str) -> asyncio.Future[PurchaseRow | None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PurchaseRow | None] = loop.create_future()
        self._waiting.setdefault(purchase_id, []).append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start)
        return future

    def _start(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, {}
        ids = list(waiting)
        for start in range(0, len(ids), MAX_BATCH):
            batch = {pid: waiting[pid] for pid in ids[start : start + MAX_BATCH]}
            task = asyncio.ensure_future(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: dict[str, list[asyncio.Future[PurchaseRow | None]]]) -> None:
        try:
            async with database_errors():
                rows = await self.pool.fetch(query("get_purchases"), list(batch))
        except Exception as exc:  # not swallowed: each waiter raises it (a fan-out point)
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        found = {row["purchase_id"]: row_to_purchase(row) for row in rows}
        for purchase_id, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(purchase_id))

    async def close(self) -> None:
        """Let lookups already sent finish (their callers are waiting for them)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
