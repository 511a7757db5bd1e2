"""Issue 20 item 3: a reconciler pass costs what its work costs, not what is in flight.

Every pass asked Postgres for the status of every reservation record of every
active item, every 2 s in every consumer: in open stock the statement most often
running. Now a pass asks only about records old enough to be republished (or
settled, when the consumer that applied them did not), and about every record
of an item only when its counts disagree with `sold`.

The tests run on a Redis database of their own: the session's live consumers
reconcile database 0, and would settle, republish and repair under the counts
these tests make (and these tests' reconcilers, owners of nothing, would read
the live stack's items as theirs).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from services.applygate import ApplyGate
from services.reconciler import Reconciler
from services.resources import CoreResources, open_core
from services.schema import PurchaseMessage
from services.settings import Settings
from services.stockfilter.keys import stock_key, swept_key
from tests.integration.test_admission_review import new_item

IN_FLIGHT = 20
OWN_REDIS_DB = 1


@pytest.fixture
async def own_core(settings: Settings) -> AsyncIterator[CoreResources]:
    base, _, _db = settings.redis_url.rpartition("/")
    async with open_core(settings.replace(redis_url=f"{base}/{OWN_REDIS_DB}")) as core:
        await core.redis.flushdb()  # only these tests use it: start from nothing
        await core.redis.set(swept_key(), "1")  # no sweep after a Redis loss here
        yield core


async def reserve_young(core: CoreResources, item_id: str) -> list[PurchaseMessage]:
    """IN_FLIGHT reservations admitted now, their messages in Kafka (say)."""
    admitted_ms = int(time.time() * 1000)
    messages = []
    for n in range(IN_FLIGHT):
        message = PurchaseMessage(f"p_{secrets.token_hex(8)}", f"u{n}", "k", item_id, 1, 0, 0)
        message = dataclasses.replace(message, admitted_at_ms=admitted_ms)
        reserved = await core.stock.reserve(
            item_id,
            message.purchase_id,
            1,
            lambda shard, m=message: dataclasses.replace(m, shard=shard).encode(),
        )
        assert reserved.shard is not None
        messages.append(message)
    await core.activity.mark(item_id, force=True)
    return messages


async def confirm_in_postgres(core: CoreResources, item_id: str, purchase_id: str) -> None:
    """As a consumer does, and then dies before settling the record."""
    async with core.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO purchases (purchase_id, user_id, idempotency_key, item_id, quantity,"
            " status, kafka_partition, kafka_offset, log_generation, admitted_at, topic)"
            " VALUES ($1, $1, 'k', $2, 1, 'confirmed', 0, 0, 0, now(), 'purchases')",
            purchase_id,
            item_id,
        )
        await conn.execute("UPDATE items SET sold = sold + 1 WHERE item_id = $1", item_id)


async def test_young_records_cost_no_status_lookup_and_stale_ones_are_still_handled(
    own_core: CoreResources,
) -> None:
    core = own_core
    item_id = await new_item(core, 100)
    messages = await reserve_young(core, item_id)
    await confirm_in_postgres(core, item_id, messages[0].purchase_id)
    published: list[str] = []

    async def publish(message: PurchaseMessage) -> None:
        published.append(message.purchase_id)

    patient = Reconciler(core, publish, stale_s=600.0, gate=ApplyGate())
    report = await patient.run_once()
    # Young: in flight, the consumers' to settle. The applied one's lingering record
    # makes the counts disagree, so that item's records are looked up (once, for
    # the drift read under the gate) but nothing is repaired: the drift is exact.
    assert report.visited == 1 and report.settled == 0 and published == []
    assert report.looked_up == IN_FLIGHT and report.rebuilt == []

    eager = Reconciler(core, publish, stale_s=0.0, gate=ApplyGate())
    report = await eager.run_once()
    assert report.settled == 1  # the applied record dropped
    assert sorted(published) == sorted(m.purchase_id for m in messages[1:])  # republished
    published.clear()
    report = await patient.run_once()  # counts agree again: nothing to look up
    assert report.looked_up == 0 and report.settled == 0 and published == []


async def test_only_an_item_whose_counts_disagree_is_read_in_full(
    own_core: CoreResources,
) -> None:
    core = own_core
    quiet_item, drifting_item = await new_item(core, 100), await new_item(core, 100)
    for item_id in (quiet_item, drifting_item):
        await reserve_young(core, item_id)
    await core.redis.incrby(stock_key(drifting_item, 1), 3)
    reconciler = Reconciler(core, None, stale_s=600.0, gate=ApplyGate())
    first = await reconciler.run_once()
    assert first.looked_up == IN_FLIGHT and first.rebuilt == []  # one read: not confirmed
    second = await reconciler.run_once()
    assert second.looked_up == IN_FLIGHT and second.rebuilt == [drifting_item]
    third = await reconciler.run_once()
    assert third.looked_up == 0 and third.rebuilt == []
