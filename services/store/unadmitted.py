"""A purchase answered 503 made final in Postgres, so its message cannot charge later.

A produce that failed after its record entered the producer's batch may still
reach the broker and be consumed. Before the gateway promises "nothing stays
reserved", it writes the purchase's final row itself (rejected, reason
`unavailable`): a copy applied later is then a duplicate of a decided purchase,
a no-op that charges nothing (the batch's `known_requests`, and the unique key
beneath it). When the message was applied first, the row is already there and
the purchase is what the consumer decided.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.schema import PurchaseMessage
from services.store.db import database_errors
from services.store.purchases import RESULTS_CHANNEL, PurchaseRow, row_to_purchase
from services.store.queries import query

UNAVAILABLE = "unavailable"
# applied_by of a row the gateway decided (a consumer writes its own name).
DECIDED_BY_GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class Fence:
    """`fenced`: this call wrote the rejected row; else `existing` is the row that
    was there (its message applied first, or an earlier request fenced it)."""

    fenced: bool
    existing: PurchaseRow | None = None


async def reject_unadmitted(
    pool: asyncpg.Pool, message: PurchaseMessage, topic: str, partition: int
) -> Fence:
    """Write the purchase's rejected row unless it has a final row; UnavailableError
    when Postgres cannot be written (then nothing is promised)."""
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        lease = await conn.fetchrow(query("lock_lease_row"), topic, partition)
        generation, epoch = (0, 0) if lease is None else (lease["log_generation"], lease["epoch"])
        inserted = await conn.fetchval(
            query("reject_unadmitted"),
            message.purchase_id,
            message.user_id,
            message.idempotency_key,
            message.item_id,
            message.quantity,
            message.admitted_at_ms,
            partition,
            generation,
            UNAVAILABLE,
            epoch,
            DECIDED_BY_GATEWAY,
            topic,
        )
        if inserted is not None:
            await conn.execute(query("notify_results"), RESULTS_CHANNEL, message.purchase_id)
            return Fence(fenced=True)
        row = await conn.fetchrow(query("get_purchase"), message.purchase_id)
    return Fence(fenced=False, existing=None if row is None else row_to_purchase(row))
