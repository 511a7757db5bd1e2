"""The sold-out hint after it expires: renewed by one shared read while every
shard is still empty, dropped as soon as one has units again."""

from __future__ import annotations

import asyncio

from gateway.hints import ItemHints
from gateway.soldout import SoldOutHint
from services.resources import CoreResources
from services.stockfilter.filter import StockFilter
from tests.conftest import fresh_id

REQUESTS = 200


class CountingReads(StockFilter):
    """The real filter, counting the shard-level reads it is asked for."""

    reads = 0

    async def shard_levels(self, item_id: str) -> list[int | None]:
        self.reads += 1
        return await super().shard_levels(item_id)


def _expired(hints: ItemHints, item_id: str) -> None:
    hints.mark_sold_out(item_id)
    hints._sold_out[item_id] = 0.0  # expired long ago, not cleared


async def test_concurrent_requests_past_the_expiry_share_one_read(core: CoreResources) -> None:
    stock = CountingReads(core.redis, core.settings.stock_shards, core.pipe)
    item_id = fresh_id()
    await stock.set_remaining(item_id, 0)
    hints = ItemHints(item_ttl_s=1.0, sold_out_ttl_s=60.0)
    _expired(hints, item_id)
    hint = SoldOutHint(hints, stock)
    answers = await asyncio.gather(*(hint.sold_out(item_id) for _ in range(REQUESTS)))
    assert all(answers)
    assert stock.reads == 1
    assert hints.is_sold_out(item_id)  # renewed for its whole time to live


async def test_units_back_in_one_shard_end_the_hint(core: CoreResources) -> None:
    stock = CountingReads(core.redis, core.settings.stock_shards, core.pipe)
    item_id = fresh_id()
    await stock.set_remaining(item_id, 0)
    await stock.adjust(item_id, stock.shards - 1, 1)  # a cancellation's unit
    hints = ItemHints(item_ttl_s=1.0, sold_out_ttl_s=60.0)
    _expired(hints, item_id)
    hint = SoldOutHint(hints, stock)
    assert not await hint.sold_out(item_id)
    assert not hints.was_sold_out(item_id)  # the next request takes the full path
    assert not await hint.sold_out(item_id)
    assert stock.reads == 1


async def test_a_missing_shard_is_not_sold_out(core: CoreResources) -> None:
    stock = StockFilter(core.redis, core.settings.stock_shards, core.pipe)
    item_id = fresh_id()  # Redis lost its filter: the reconciler rebuilds it
    hints = ItemHints(item_ttl_s=1.0, sold_out_ttl_s=60.0)
    _expired(hints, item_id)
    assert not await SoldOutHint(hints, stock).sold_out(item_id)


async def test_no_hint_no_read(core: CoreResources) -> None:
    stock = CountingReads(core.redis, core.settings.stock_shards, core.pipe)
    hints = ItemHints(item_ttl_s=1.0, sold_out_ttl_s=60.0)
    assert not await SoldOutHint(hints, stock).sold_out(fresh_id())
    assert stock.reads == 0


async def test_a_clear_during_the_read_is_not_undone(core: CoreResources) -> None:
    """Units returned (the hint cleared by the returned-units message) while the
    shared read was on its way: its levels may predate them, so no renewal."""
    item_id = fresh_id()
    hints = ItemHints(item_ttl_s=1.0, sold_out_ttl_s=60.0)

    class ClearedWhileReading(StockFilter):
        async def shard_levels(self, item_id: str) -> list[int | None]:
            levels = await super().shard_levels(item_id)
            hints.forget(item_id)  # the message arrives before the reply is used
            return levels

    stock = ClearedWhileReading(core.redis, core.settings.stock_shards, core.pipe)
    await stock.set_remaining(item_id, 0)
    _expired(hints, item_id)
    assert not await SoldOutHint(hints, stock).sold_out(item_id)
    assert not hints.is_sold_out(item_id)
