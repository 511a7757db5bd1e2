"""A stock cut deeper than the filter's shards hold, then a raise: the filter ends
exact, with no phantom unit (docs/faults.md, fourth round: `chaos-1-00001`).

In-process against the session's real Postgres and Redis: the reservations are
taken as admissions take them, and the admin writes applied as the gateway
applies them."""

from __future__ import annotations

import secrets

from services.filterrepair import read_views
from services.reconciler import apply_item_write
from services.resources import CoreResources
from services.schema import PurchaseMessage
from services.stockfilter.filter import RESERVED
from services.store.items import write_item
from tests.conftest import fresh_id


async def reserve_units(core: CoreResources, item_id: str, count: int) -> None:
    for _ in range(count):
        purchase_id = f"p_{secrets.token_hex(16)}"
        shard = core.stock.home_shard(purchase_id)
        message = PurchaseMessage(purchase_id, fresh_id("u"), "k", item_id, 1, shard, 0)
        for tried in core.stock.shard_order(shard, frozenset()):
            moved = PurchaseMessage(purchase_id, message.user_id, "k", item_id, 1, tried, 0)
            code, _ = await core.stock.reserve_at(item_id, tried, purchase_id, 1, moved.encode())
            if code == RESERVED:
                break
        else:
            raise AssertionError("no shard had a unit")


async def test_a_raise_after_a_cut_deeper_than_the_shards_adds_no_phantom(
    core: CoreResources,
) -> None:
    item_id = fresh_id()
    await apply_item_write(core, await write_item(core.pool, item_id, 10, 1))
    await reserve_units(core, item_id, 8)  # in flight: the shards hold 2
    # stock - sold - in flight = 6 - 8: two units the shards do not hold
    await apply_item_write(core, await write_item(core.pool, item_id, 6, 1))
    await apply_item_write(core, await write_item(core.pool, item_id, 14, 1))
    (view,) = await read_views(core, [item_id])
    # 14 - 0 sold - 8 in flight: 6 on sale, not 8 (the raise's whole delta)
    assert (view.filter_units, view.held_units, view.drift) == (6, 8, 0)
