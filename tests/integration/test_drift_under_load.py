"""Issue 23: a stock filter's drift is repaired while a crowd keeps buying.

The reconciler repaired a drift only once the item was idle (the same filter
level on three passes), and only where a shard still held what it had read: a
crowd never let either happen, so planted phantom units kept admitting purchases
that ended `rejected: sold_out`, and lacking units undersold, for as long as the
crowd lasted.

The test's own reading of the drift runs while the consumers commit, so it is
a bracket rather than a value: Postgres read, then Redis, then Postgres again.
A unit that moved between the reads (reserved and applied, applied and settled)
makes the first reading too high or the second too low, never the other way
round (the crowd only buys: no cancels, no admin writes), so the true drift lies
between the two, and both at 0 means the filter is exact.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

import aiohttp

from services.filterrepair import FilterView, decode_records, view_statuses
from services.resources import CoreResources
from services.stockfilter.keys import stock_key
from services.store.items import get_items
from services.store.purchases import known_statuses
from tests.conftest import fresh_id, wait_for
from tests.integration.conftest import LiveStack

STOCK = 200_000
PHANTOM_UNITS = 7
LACKING_UNITS = 5
BUYERS = 12
# The crowd's bounds: it stops at whichever comes first, or when the test ends it.
CROWD_MAX_PURCHASES = 100_000
CROWD_MAX_S = 120.0
# Purchases admitted before the damage, so the sale is in full swing.
WARM_UP_PURCHASES = 200
# Purchases after convergence during which no repair may invent or lose a unit.
AFTER_CONVERGED = 1_500


@dataclass
class Crowd:
    live: LiveStack
    http: aiohttp.ClientSession
    item_ids: list[str]
    admitted: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def buyer(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + CROWD_MAX_S
        i = 0
        while not self.stop.is_set() and self.admitted < CROWD_MAX_PURCHASES:
            if loop.time() > ends_at:
                return
            item_id = self.item_ids[(n + i) % len(self.item_ids)]
            headers = self.live.user_headers(f"crowd-{n}-{i}-{secrets.token_hex(2)}", str(i))
            async with self.http.post(
                f"{self.live.url}/v1/purchases", json={"item_id": item_id}, headers=headers
            ) as response:
                # 429: this one client outran its rate limit; it just buys on.
                assert response.status in (202, 429), await response.text()
                self.admitted += response.status == 202
            i += 1

    async def run(self) -> None:
        await asyncio.gather(*(self.buyer(n) for n in range(BUYERS)))


async def drift_bracket(core: CoreResources, item_id: str) -> tuple[int, int]:
    """(low, high): the item's drift (units the filter lacks; negative: holds too
    many) lies between them, whatever the consumers commit meanwhile."""
    async with core.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        before = (await get_items(conn, [item_id]))[item_id]  # the snapshot is taken here
        shards = await core.stock.snapshot(item_id)
        messages = decode_records(shards)
        ids = [m.purchase_id for m in messages]
        statuses_before = await known_statuses(conn, ids)
    async with core.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        after = (await get_items(conn, [item_id]))[item_id]
        statuses_after = await known_statuses(conn, ids)
    # A record Postgres does not know counts as in flight (held).
    seen_before = view_statuses(item_id, ids, statuses_before)
    seen_after = view_statuses(item_id, ids, statuses_after)
    high = FilterView(before, shards, messages, seen_before).drift
    low = FilterView(after, shards, messages, seen_after).drift
    return low, high


async def put_item(live: LiveStack, http: aiohttp.ClientSession, item_id: str) -> None:
    async with http.put(
        f"{live.url}/v1/items/{item_id}",
        json={"stock": STOCK, "per_user_limit": 1},
        headers=live.admin_headers,
    ) as response:
        assert response.status == 201, await response.text()


async def test_planted_drift_is_repaired_while_the_crowd_buys(
    live: LiveStack, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    phantom_item, lacking_item = fresh_id("phantom"), fresh_id("lacking")
    items = [phantom_item, lacking_item]
    for item_id in items:
        await put_item(live, http, item_id)
    crowd = Crowd(live, http, items)
    crowd_task = asyncio.create_task(crowd.run())
    try:

        async def warmed_up() -> bool:
            assert not crowd_task.done()
            return crowd.admitted >= WARM_UP_PURCHASES

        await wait_for(warmed_up, timeout_s=60)
        await core.redis.incrby(stock_key(phantom_item, 0), PHANTOM_UNITS)
        await core.redis.decrby(stock_key(lacking_item, 1), LACKING_UNITS)
        # The damage is seen: the true drift is at or below `low`, at or above `high`.
        assert (await drift_bracket(core, phantom_item))[0] < 0
        assert (await drift_bracket(core, lacking_item))[1] > 0

        async def exact_while_buying() -> bool:
            assert not crowd_task.done(), "the crowd ended before the filters converged"
            readings = [await drift_bracket(core, item_id) for item_id in items]
            return readings == [(0, 0), (0, 0)]

        # Two reconciler passes (2 s apart) repair it; the deadline is generous.
        await wait_for(exact_while_buying, timeout_s=60, interval_s=0.2)
        # No repair racing the crowd invents or loses a unit, for as long as the
        # crowd buys AFTER_CONVERGED more (several reconciler passes).
        until = crowd.admitted + AFTER_CONVERGED
        while crowd.admitted < until:
            assert not crowd_task.done()
            for item_id in items:
                low, high = await drift_bracket(core, item_id)
                assert low <= 0 <= high, (item_id, low, high)
    finally:
        crowd.stop.set()
        await crowd_task

    async def settled_exactly() -> bool:
        return [await drift_bracket(core, item_id) for item_id in items] == [(0, 0), (0, 0)]

    await wait_for(settled_exactly, timeout_s=60, interval_s=0.2)
    async with core.pool.acquire() as conn:
        sold = await conn.fetch(
            "SELECT i.sold, (SELECT coalesce(sum(quantity), 0) FROM purchases p"
            " WHERE p.item_id = i.item_id AND p.status = 'confirmed') AS confirmed"
            " FROM items i WHERE i.item_id = ANY($1)",
            items,
        )
    assert all(row["sold"] == row["confirmed"] > 0 for row in sold)
