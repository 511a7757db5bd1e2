"""Items as admission reads them: from the in-process cache, one shared read on a miss."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.errors import ApiError
from gateway.hints import ItemHints
from services.errors import ItemNotFoundError
from services.resources import CoreResources
from services.store.items import Item, get_item


class ItemReads:
    def __init__(self, core: CoreResources, hints: ItemHints) -> None:
        self.core = core
        self.hints = hints
        self._reading: dict[str, asyncio.Future[Item | None]] = {}

    async def item(self, item_id: str) -> Item:
        """From the in-process cache, unknown ids included, so a flood of bogus ids
        costs no Postgres query each."""
        cached = self.hints.item(item_id)
        if cached is not None:
            return cached
        if not self.hints.is_missing(item_id):
            # When the entry expires, every request in flight misses at once:
            # they share one read instead of sending hundreds to Postgres.
            reading = self._reading.get(item_id)
            if reading is None:
                reading = asyncio.ensure_future(self._read_item(item_id))
                self._reading[item_id] = reading
                reading.add_done_callback(lambda _: self._reading.pop(item_id, None))
            item = await asyncio.shield(reading)
            if item is not None:
                return item
        raise ApiError(404, "item_not_found", f"no item {item_id}")

    async def _read_item(self, item_id: str) -> Item | None:
        return await read_item(self.core, self.hints, item_id, self.hints.remember_item)


async def read_item(
    core: CoreResources, hints: ItemHints, item_id: str, remember: Callable[[Item], None]
) -> Item | None:
    """One Postgres read of an item: `remember` caches it, an absence is cached as
    missing (from the time the read began, so a write meanwhile is not hidden)."""
    read_at = time.monotonic()
    try:
        item = await get_item(core.pool, item_id)
    except ItemNotFoundError:
        hints.remember_missing(item_id, read_at)
        return None
    remember(item)
    return item
