"""The outbox of purchase events: read what the broker has not acknowledged, mark what it has.

"Published" is one number per partition of the purchases topic (its lease row's
`events_published_seq`, migration 0006): every event of the partition up to
that seq was acknowledged."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.store.db import database_errors
from services.store.items import rfc3339
from services.store.queries import query


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    seq: int
    event_id: str
    purchase_id: str
    user_id: str
    item_id: str
    quantity: int
    status: str
    reason: str | None
    at: datetime
    partition: int  # of the purchases topic: whose lease wrote it

    def encode(self) -> bytes:
        """The value api.md gives for the purchase-events topic."""
        return json.dumps(
            {
                "event_id": self.event_id,
                "purchase_id": self.purchase_id,
                "user_id": self.user_id,
                "item_id": self.item_id,
                "quantity": self.quantity,
                "status": self.status,
                "reason": self.reason,
                "at": rfc3339(self.at),
            },
            separators=(",", ":"),
        ).encode()


async def unpublished_events(
    pool: asyncpg.Pool, topic: str, epochs: dict[int, int], limit: int
) -> list[OutboxEvent]:
    """The oldest unpublished events, in outbox order, of the partitions whose lease
    is still at the given epoch (partition -> epoch): a member that lost one stops
    relaying it."""
    if not epochs:
        return []
    partitions = sorted(epochs)
    async with database_errors():
        rows = await pool.fetch(
            query("unpublished_events"),
            topic,
            partitions,
            [epochs[p] for p in partitions],
            limit,
        )
    return [
        OutboxEvent(
            row["seq"],
            row["event_id"],
            row["purchase_id"],
            row["user_id"],
            row["item_id"],
            row["quantity"],
            row["status"],
            row["reason"],
            row["at"],
            row["kafka_partition"],
        )
        for row in rows
    ]


async def mark_published(pool: asyncpg.Pool, topic: str, marks: dict[int, int]) -> None:
    """partition -> the seq up to which all its events were acknowledged. One
    statement per partition: each waits only for that lease's batch in progress,
    and no two relays lock lease rows in different orders."""
    async with database_errors():
        for partition, seq in sorted(marks.items()):
            await pool.execute(query("mark_published"), topic, partition, seq)


def published_marks(events: list[OutboxEvent], acked: set[int]) -> dict[int, int]:
    """partition -> the last seq of the run of its events (in seq order) that were
    all acknowledged: an event sent after a failed one of its partition stays
    unpublished, and is sent again (readers drop the copy by event_id)."""
    marks: dict[int, int] = {}
    stopped: set[int] = set()
    for event in sorted(events, key=lambda e: e.seq):
        if event.partition in stopped:
            continue
        if event.seq in acked:
            marks[event.partition] = event.seq
        else:
            stopped.add(event.partition)
    return marks


async def prune_published(
    pool: asyncpg.Pool, topic: str, partitions: list[int], retention_s: float, limit: int
) -> int:
    """Delete published events older than the retention, up to `limit` per partition;
    the number deleted."""
    deleted = 0
    async with database_errors():
        for partition in partitions:
            status = await pool.execute(
                query("prune_published"), topic, partition, retention_s, limit
            )
            deleted += int(status.split()[-1])
    return deleted
