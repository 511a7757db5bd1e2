"""The outbox of purchase events: read what the broker has not acknowledged, mark what it has."""

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
        )
        for row in rows
    ]


async def mark_published(pool: asyncpg.Pool, seqs: list[int]) -> None:
    if not seqs:
        return
    async with database_errors():
        await pool.execute(query("mark_published"), seqs)
