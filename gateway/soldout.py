"""The sold-out hint of an item, renewed by one shared read when it expires.

The hint lives half a second (units a missed cancellation message returned must
not wait longer). When it expired, every request in flight took the full
admission at once (rate limits, a claim, a reserve that found every shard empty,
an unclaim): under a spike's 256 connections that was hundreds of admissions per
expiry, a tenth of the gateway's CPU. Now the first request past the expiry
reads the item's shard levels, the others wait for that read, and the hint is
renewed only when every shard is still there and empty: what a full admission
would have found, for one pipelined read.
"""

from __future__ import annotations

import asyncio

from gateway.hints import ItemHints
from services.errors import UnavailableError
from services.stockfilter.filter import StockFilter


class SoldOutHint:
    def __init__(self, hints: ItemHints, stock: StockFilter) -> None:
        self.hints = hints
        self.stock = stock
        self._reading: dict[str, asyncio.Future[bool]] = {}

    async def sold_out(self, item_id: str) -> bool:
        if self.hints.is_sold_out(item_id):
            return True
        if not self.hints.was_sold_out(item_id):
            return False
        reading = self._reading.get(item_id)
        if reading is None:
            reading = asyncio.ensure_future(self._still_sold_out(item_id))
            self._reading[item_id] = reading
            reading.add_done_callback(lambda _: self._reading.pop(item_id, None))
        return await asyncio.shield(reading)

    async def _still_sold_out(self, item_id: str) -> bool:
        try:
            levels = await self.stock.shard_levels(item_id)
        except UnavailableError:
            levels = [None]  # unknown: the full admission decides (and answers)
        # A returned-units message or an admin write may have cleared the hint
        # while the levels were on their way (they may predate the units): then
        # the read proves nothing, and the full admission decides.
        cleared = not self.hints.was_sold_out(item_id)
        if not cleared and all(level is not None and level <= 0 for level in levels):
            self.hints.mark_sold_out(item_id)
            return True
        self.hints.forget_sold_out(item_id)
        return False
