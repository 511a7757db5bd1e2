"""Expiring holds past their pay_by: the partition owner's sweep, fenced like a batch.

A pay message and the sweep both run under the partition's lease row lock with
the epoch checked, and both judge pay_by by the database's clock: a purchase is
paid or expired by the single writer of its partition, whichever comes first in
that writer's order, never both, whatever process pauses or dies.
"""

from __future__ import annotations

from services.store.batch import Lease, lock_lease
from services.store.db import Connection, database_errors
from services.store.decide import EXPIRED, Target
from services.store.purchases import RESULTS_CHANNEL, notify_payloads
from services.store.queries import query

# Holds expired per transaction: a backlog is worked off in rounds.
EXPIRE_BATCH = 500


async def due_partitions(conn: Connection, topic: str, partitions: list[int]) -> set[int]:
    """The partitions among these with confirmed holds past pay_by (a hint: the
    expiry itself decides again under the lease)."""
    if not partitions:
        return set()
    async with database_errors():
        rows = await conn.fetch(query("due_partitions"), topic, partitions)
    return {row["kafka_partition"] for row in rows}


async def expire_due(conn: Connection, lease: Lease, limit: int = EXPIRE_BATCH) -> list[Target]:
    """Expire the partition's confirmed holds past pay_by; the purchases expired.

    FencedError (nothing written) when the lease's epoch moved on.
    """
    async with database_errors(), conn.transaction():
        await lock_lease(conn, lease)
        rows = await conn.fetch(query("expire_due"), lease.topic, lease.partition, limit)
        expired = [
            Target(
                r["purchase_id"], r["user_id"], r["item_id"], r["quantity"], EXPIRED, r["pay_by"]
            )
            for r in rows
        ]
        for payload in notify_payloads([t.purchase_id for t in expired]):
            await conn.execute(query("notify_results"), RESULTS_CHANNEL, payload)
    return expired
