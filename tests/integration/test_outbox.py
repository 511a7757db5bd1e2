"""The outbox in Postgres: unpublished events by partition, the published mark, pruning."""

from __future__ import annotations

from services.resources import CoreResources
from services.store.batch import apply_batch
from services.store.items import upsert_item
from services.store.outbox import (
    mark_published,
    prune_published,
    published_marks,
    unpublished_events,
)
from tests.conftest import fresh_id
from tests.integration.test_store import PARTITION, fresh_lease, records


async def test_the_mark_hides_what_was_published_and_pruning_keeps_the_rest(
    core: CoreResources,
) -> None:
    item_id = fresh_id()
    await upsert_item(core.pool, item_id, 10, 1)
    topic, lease = await fresh_lease(core)
    async with core.pool.acquire() as conn:
        await apply_batch(conn, lease, records(item_id, 5, 0))
    owned = {PARTITION: lease.epoch}
    events = await unpublished_events(core.pool, topic, owned, 100)
    assert [e.event_id for e in events] == [f"p_{item_id}_{n}:confirmed" for n in range(5)]
    assert await unpublished_events(core.pool, topic, {PARTITION: lease.epoch + 1}, 100) == []

    # The broker acknowledged all but the fourth: the mark stops before it.
    acked = {e.seq for e in events} - {events[3].seq}
    await mark_published(core.pool, topic, published_marks(events, acked))
    left = await unpublished_events(core.pool, topic, owned, 100)
    assert [e.seq for e in left] == [events[3].seq, events[4].seq]
    # A relay that lost the race marks an older seq: the mark never goes back.
    await mark_published(core.pool, topic, {PARTITION: events[0].seq})
    assert [e.seq for e in await unpublished_events(core.pool, topic, owned, 100)] == [
        events[3].seq,
        events[4].seq,
    ]

    # Young events stay; past the retention only published ones go, oldest first.
    assert await prune_published(core.pool, topic, [PARTITION], 3600.0, 100) == 0
    assert await prune_published(core.pool, topic, [PARTITION], 0.0, 2) == 2
    assert await prune_published(core.pool, topic, [PARTITION], 0.0, 100) == 1
    remaining = await core.pool.fetch(
        "SELECT seq FROM purchase_events WHERE topic = $1 ORDER BY seq", topic
    )
    assert [r["seq"] for r in remaining] == [events[3].seq, events[4].seq]
