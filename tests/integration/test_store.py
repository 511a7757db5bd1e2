"""Postgres is the correctness layer: fencing, no double apply, no oversell."""

from __future__ import annotations

import asyncpg
import pytest

from services.errors import FencedError, StockBelowSoldError
from services.resources import CoreResources
from services.schema import PurchaseMessage
from services.store.batch import Lease, apply_batch
from services.store.decide import Record
from services.store.items import get_item, upsert_item
from services.store.leases import acquire_lease
from services.store.purchases import item_counts
from tests.conftest import fresh_id

PARTITION = 0


def records(item_id: str, count: int, first_offset: int) -> list[Record]:
    return [
        Record(
            first_offset + n,
            PurchaseMessage(f"p_{item_id}_{n}", f"user-{item_id}-{n}", "k", item_id, 1, 0, 0),
        )
        for n in range(count)
    ]


async def fresh_lease(core: CoreResources) -> tuple[str, Lease]:
    """A lease on a topic of its own, so tests never share offsets."""
    topic = fresh_id("topic")
    grant = await acquire_lease(core.pool, topic, PARTITION, "test")
    return topic, Lease(topic, PARTITION, grant.epoch)


async def test_a_stale_epoch_commits_nothing(core: CoreResources) -> None:
    item_id = fresh_id()
    await upsert_item(core.pool, item_id, 10, 1)
    topic, zombie = await fresh_lease(core)
    newer = await acquire_lease(core.pool, topic, PARTITION, "the new owner")
    assert newer.epoch > zombie.epoch
    async with core.pool.acquire() as conn:
        with pytest.raises(FencedError):
            await apply_batch(conn, zombie, records(item_id, 3, 0))
    assert await item_counts(core.pool, item_id) == {}
    assert (await get_item(core.pool, item_id)).sold == 0
    owner = Lease(topic, PARTITION, newer.epoch)
    async with core.pool.acquire() as conn:
        result = await apply_batch(conn, owner, records(item_id, 3, 0))
    assert result.next_offset == 3 and (await get_item(core.pool, item_id)).sold == 3


async def test_redelivered_and_republished_records_apply_once(core: CoreResources) -> None:
    item_id = fresh_id()
    await upsert_item(core.pool, item_id, 10, 1)
    _, lease = await fresh_lease(core)
    batch = records(item_id, 4, 0)
    async with core.pool.acquire() as conn:
        await apply_batch(conn, lease, batch)
        redelivered = await apply_batch(conn, lease, batch)
        assert redelivered.skipped == 4
        # The reconciler republishes: the same purchases at later offsets.
        republished = await apply_batch(conn, lease, records(item_id, 4, 10))
    assert all(d.duplicate for d in republished.decisions.decisions)
    assert (await get_item(core.pool, item_id)).sold == 4
    assert await item_counts(core.pool, item_id) == {"confirmed": (4, 4)}


async def test_batch_confirms_in_offset_order_and_never_oversells(core: CoreResources) -> None:
    item_id = fresh_id()
    await upsert_item(core.pool, item_id, 5, 1)
    _, lease = await fresh_lease(core)
    batch = list(reversed(records(item_id, 12, 100)))
    async with core.pool.acquire() as conn:
        result = await apply_batch(conn, lease, batch)
    confirmed = sorted(d.record.offset for d in result.decisions.new if d.status == "confirmed")
    assert confirmed == [100, 101, 102, 103, 104]
    assert await item_counts(core.pool, item_id) == {"confirmed": (5, 5), "rejected": (7, 7)}


async def test_the_check_constraint_refuses_oversell_whatever_the_code_does(
    core: CoreResources,
) -> None:
    item_id = fresh_id()
    await upsert_item(core.pool, item_id, 2, 1)
    with pytest.raises(asyncpg.CheckViolationError):
        await core.pool.execute("UPDATE items SET sold = 3 WHERE item_id = $1", item_id)


async def test_stock_cannot_drop_below_sold(core: CoreResources) -> None:
    item_id = fresh_id()
    await upsert_item(core.pool, item_id, 5, 1)
    _, lease = await fresh_lease(core)
    async with core.pool.acquire() as conn:
        await apply_batch(conn, lease, records(item_id, 3, 0))
    with pytest.raises(StockBelowSoldError):
        await upsert_item(core.pool, item_id, 2, 1)
    item, created = await upsert_item(core.pool, item_id, 3, 1)
    assert not created and item.remaining == 0


def cancel_of(purchase: Record, offset: int) -> Record:
    m = purchase.message
    return Record(offset, PurchaseMessage.cancel(m.purchase_id, m.user_id, m.item_id, 1, 0))


async def test_a_cancel_returns_units_once_even_when_redelivered(core: CoreResources) -> None:
    item_id = fresh_id()
    await upsert_item(core.pool, item_id, 1, 1)
    _, lease = await fresh_lease(core)
    first, second = records(item_id, 2, 0)
    async with core.pool.acquire() as conn:
        await apply_batch(conn, lease, [first])
        # The cancel's unit is sold to the purchase after it, in the same batch.
        batch = [cancel_of(first, 1), Record(2, second.message)]
        result = await apply_batch(conn, lease, batch)
        assert [d.status for d in result.decisions.new] == ["confirmed"]
        assert (await apply_batch(conn, lease, batch)).skipped == 2
        # A copy of the cancel later in the log finds the purchase cancelled already.
        again = await apply_batch(conn, lease, [cancel_of(first, 3)])
        assert again.decisions.applied_cancellations == []
    assert (await get_item(core.pool, item_id)).sold == 1
    assert await item_counts(core.pool, item_id) == {"cancelled": (1, 1), "confirmed": (1, 1)}


async def test_a_purchase_cancelled_in_its_own_batch_is_never_sold(core: CoreResources) -> None:
    item_id = fresh_id()
    await upsert_item(core.pool, item_id, 1, 1)
    _, lease = await fresh_lease(core)
    (purchase,) = records(item_id, 1, 0)
    async with core.pool.acquire() as conn:
        await apply_batch(conn, lease, [purchase, cancel_of(purchase, 1)])
    assert (await get_item(core.pool, item_id)).sold == 0
    assert await item_counts(core.pool, item_id) == {"cancelled": (1, 1)}
