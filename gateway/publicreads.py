"""The Postgres reads of public routes, bounded so that no flood of them can take
the pool that admission and the admin need.

Rate limits bound how many such reads an address starts in a window, not how
many run at once: a burst within the limit (or many addresses at once) would
queue every other user of the pool behind it. So at most half the pool serves
them at a time, and reads of the same item share one query.
"""

from __future__ import annotations

import asyncio

from gateway.errors import ApiError
from gateway.hints import ItemHints
from gateway.itemreads import read_item
from gateway.singleflight import SingleFlight
from services.resources import CoreResources
from services.store.items import Item
from services.store.purchases import PurchaseRow, get_purchase


class PublicReads:
    def __init__(self, core: CoreResources, hints: ItemHints) -> None:
        self.core = core
        self.hints = hints
        self.slots = max(1, core.settings.db_pool_size // 2)
        self._slots = asyncio.Semaphore(self.slots)
        self._items: SingleFlight[str, Item | None] = SingleFlight()

    async def purchase(self, purchase_id: str) -> PurchaseRow | None:
        async with self._slots:
            return await get_purchase(self.core.pool, purchase_id)

    async def item(self, item_id: str) -> Item:
        """GET /v1/items/{id} past its caches; the answer, or its absence, is cached."""
        item = await self._items.run(item_id, lambda: self._read_item(item_id))
        if item is None:
            raise ApiError(404, "item_not_found", f"no item {item_id}")
        return item

    async def _read_item(self, item_id: str) -> Item | None:
        async with self._slots:
            return await read_item(self.core, self.hints, item_id, self.hints.remember_view)
