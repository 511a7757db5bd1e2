"""`apply`: how fast one consumer writes purchases into Postgres, batched or not.

Both modes call the consumer's real `apply_batch` as a consumer does: the
partitions it leases are applied side by side, each on a connection of its own
(`Worker.handle_all`), and each partition's records in sequence: lock the
lease, check the epoch, decide, insert, move `sold` and the stored offset,
notify. Batched, that is one transaction per `APPLY_BATCH_RECORDS` records of a
partition; one by one, one per record. The batched rate of a single partition
(one connection, nothing side by side) is reported too.
"""

from __future__ import annotations

import asyncio
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
# Partitions one consumer applies side by side: the bench stack's 12 partitions
# over its 2 consumers give each 6; 4 leaves this 2-core machine's Postgres room.
APPLY_PARTITIONS = 4


@dataclass(frozen=True, slots=True)
class ApplyFigures:
    batched_per_s: float
    one_by_one_per_s: float
    batched_records: int
    one_by_one_records: int
    batch_records: int
    partitions: int = APPLY_PARTITIONS
    one_partition_per_s: float = 0.0


@dataclass(frozen=True, slots=True)
class PartitionWork:
    lease: Lease
    records: list[Record]


async def measure_apply(
    pool: asyncpg.Pool, secret: str, batched_records: int, one_by_one_records: int
) -> ApplyFigures:
    run = secrets.token_hex(3)
    batched = await _partitions(pool, secret, f"bench-apply-{run}-b", batched_records)
    single = await _partitions(pool, secret, f"bench-apply-{run}-s", one_by_one_records)
    alone = await _partitions(pool, secret, f"bench-apply-{run}-a", batched_records, 1)
    batched_s = await _timed(pool, batched, APPLY_BATCH_RECORDS)
    single_s = await _timed(pool, single, 1)
    alone_s = await _timed(pool, alone, APPLY_BATCH_RECORDS)
    return ApplyFigures(
        batched_per_s=batched_records / max(batched_s, 1e-9),
        one_by_one_per_s=one_by_one_records / max(single_s, 1e-9),
        batched_records=batched_records,
        one_by_one_records=one_by_one_records,
        batch_records=APPLY_BATCH_RECORDS,
        one_partition_per_s=batched_records / max(alone_s, 1e-9),
    )


async def _timed(pool: asyncpg.Pool, work: list[PartitionWork], batch: int) -> float:
    """Seconds to apply every partition's records, partitions side by side."""

    async def one(part: PartitionWork) -> None:
        async with pool.acquire() as conn:
            for chunk in _chunks(part.records, batch):
                await apply_batch(conn, part.lease, chunk)

    started = time.perf_counter()
    await asyncio.gather(*(one(part) for part in work))
    return time.perf_counter() - started


async def _partitions(
    pool: asyncpg.Pool, secret: str, topic: str, count: int, partitions: int = APPLY_PARTITIONS
) -> list[PartitionWork]:
    """`count` records spread over the partitions of a new topic, each leased, each
    partition with an item of its own (as items map to partitions)."""
    await ensure_leases(pool, topic, partitions)
    work = []
    for partition in range(partitions):
        grant = await acquire_lease(pool, topic, partition, f"{topic}-owner")
        share = count // partitions + (1 if partition < count % partitions else 0)
        item_id = f"{topic}-{partition}"
        records = await _records(pool, secret, item_id, grant.next_offset, share)
        work.append(PartitionWork(Lease(topic, partition, grant.epoch), records))
    return work


async def _records(
    pool: asyncpg.Pool, secret: str, item_id: str, first_offset: int, count: int
) -> list[Record]:
    """An item with stock for all of them (every record confirms), one buyer each."""
    await upsert_item(pool, item_id, max(count, 1), 1)
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
