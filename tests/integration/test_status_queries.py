"""`flashsale status` shows the items on sale now, the most active first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.resources import CoreResources
from services.store.batch import Lease, apply_batch
from services.store.items import SaleTerms, write_item
from services.store.leases import acquire_lease
from services.store.status import active_items, item_counts
from tests.conftest import fresh_id
from tests.integration.test_store import records

WINDOW_S = 60.0


async def test_active_items_are_on_sale_now_most_active_first(core: CoreResources) -> None:
    now = datetime.now(UTC)
    hot, warm, idle, sold_out, ended, later = (fresh_id(name) for name in (
        "hot", "warm", "idle", "soldout", "ended", "later"
    ))  # fmt: skip
    for item_id in (hot, warm, idle):
        await write_item(core.pool, item_id, 10, 5)
    await write_item(core.pool, sold_out, 0, 5)
    await write_item(core.pool, ended, 10, 5, SaleTerms(ends_at=now - timedelta(minutes=1)))
    await write_item(core.pool, later, 10, 5, SaleTerms(starts_at=now + timedelta(hours=1)))
    topic = fresh_id("topic")
    grant = await acquire_lease(core.pool, topic, 0, "test")
    async with core.pool.acquire() as conn:
        await apply_batch(
            conn, Lease(topic, 0, grant.epoch), [*records(hot, 3, 0), *records(warm, 1, 3)]
        )

    shown = await active_items(core.pool, WINDOW_S, 1000)
    order = [active.item.item_id for active in shown]
    assert order.index(hot) < order.index(warm) < order.index(idle)
    assert {sold_out, ended, later}.isdisjoint(order)
    applied = {active.item.item_id: active.applied for active in shown}
    assert (applied[hot], applied[warm], applied[idle]) == (3, 1, 0)
    assert [a.item.item_id for a in await active_items(core.pool, WINDOW_S, 1)] != [idle]

    counts = await item_counts(core.pool, WINDOW_S)
    assert counts.on_sale >= 3 and counts.total - counts.on_sale >= 3
