"""`apply`: how fast one consumer writes purchases into Postgres, batched or not.

Both modes call the consumer's real `apply_batch` on one connection, in
sequence, as one partition's owner does: lock the lease, check the epoch,
decide, insert, move `sold` and the stored offset, notify. Batched, that is one
transaction per `APPLY_BATCH_RECORDS` records; one by one, one per record.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg

from services.schema import PurchaseMessage, purchase_id_for
from services.settings import BATCH_MAX_RECORDS
from services.store.batch import Lease, apply_batch
from services.store.decide import Record
from services.store.items import upsert_item
from services.store.leases import acquire_lease, ensure_leases

APPLY_BATCH_RECORDS = BATCH_MAX_RECORDS


@dataclass(frozen=True, slots=True)
class ApplyFigures:
    batched_per_s: float
    one_by_one_per_s: float
    batched_records: int
    one_by_one_records: int
    batch_records: int


async def measure_apply(
    pool: asyncpg.Pool, secret: str, batched_records: int, one_by_one_records: int
) -> ApplyFigures:
    run = secrets.token_hex(3)
    topic = f"bench-apply-{run}"
    await ensure_leases(pool, topic, 1)
    grant = await acquire_lease(pool, topic, 0, f"bench-apply-{run}")
    lease = Lease(topic, 0, grant.epoch)
    batched = await _records(pool, secret, f"{topic}-batched", grant.next_offset, batched_records)
    single = await _records(
        pool, secret, f"{topic}-single", grant.next_offset + batched_records, one_by_one_records
    )
    async with pool.acquire() as conn:
        started = time.perf_counter()
        for chunk in _chunks(batched, APPLY_BATCH_RECORDS):
            await apply_batch(conn, lease, chunk)
        batched_s = time.perf_counter() - started
        started = time.perf_counter()
        for record in single:
            await apply_batch(conn, lease, [record])
        single_s = time.perf_counter() - started
    return ApplyFigures(
        batched_per_s=batched_records / max(batched_s, 1e-9),
        one_by_one_per_s=one_by_one_records / max(single_s, 1e-9),
        batched_records=batched_records,
        one_by_one_records=one_by_one_records,
        batch_records=APPLY_BATCH_RECORDS,
    )


async def _records(
    pool: asyncpg.Pool, secret: str, item_id: str, first_offset: int, count: int
) -> list[Record]:
    """An item with stock for all of them (every record confirms), one buyer each."""
    await upsert_item(pool, item_id, count, 1)
    now_ms = int(time.time() * 1000)
    records = []
    for n in range(count):
        user_id, key = f"{item_id}-{n}", f"k-{n}"
        message = PurchaseMessage(
            purchase_id_for(secret, user_id, key), user_id, key, item_id, 1, 0, now_ms
        )
        records.append(Record(first_offset + n, message))
    return records


def _chunks(records: list[Record], size: int) -> Iterator[list[Record]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]
