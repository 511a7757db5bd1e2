"""What the checker reads from Postgres: a read-only, consistent snapshot.

The SQL is kept here on purpose instead of reusing `services.store`: the checker
must not trust the code it checks, so it reads the tables with its own plain
SELECTs (in one REPEATABLE READ, read-only transaction) and decides in Python.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg

POLL_S = 0.25
FINAL = ("confirmed", "rejected", "cancelled", "paid", "expired")
# The constraints of design.md's correctness layer; the checker wants them there.
REQUIRED_CONSTRAINTS = frozenset({"no_oversell", "one_purchase_per_key"})


@dataclass(frozen=True, slots=True)
class ItemRow:
    item_id: str
    stock: int
    sold: int
    per_user_limit: int


@dataclass(frozen=True, slots=True)
class PurchaseRow:
    purchase_id: str
    user_id: str
    idempotency_key: str
    item_id: str
    quantity: int
    status: str
    reason: str | None
    kafka_partition: int
    # None: decided by a gateway at no offset (a 503'd purchase made final, 0007).
    kafka_offset: int | None
    log_generation: int
    lease_epoch: int
    admitted_s: float
    applied_s: float
    applied_by: str | None = None


@dataclass
class Snapshot:
    items: dict[str, ItemRow] = field(default_factory=dict)
    purchases: list[PurchaseRow] = field(default_factory=list)
    constraints: frozenset[str] = frozenset()


ITEMS_SQL = "SELECT item_id, stock, sold, per_user_limit FROM items"
PURCHASES_SQL = """
SELECT purchase_id, user_id, idempotency_key, item_id, quantity, status, reason,
       kafka_partition, kafka_offset, log_generation, lease_epoch,
       extract(epoch FROM admitted_at)::float8 AS admitted_s,
       extract(epoch FROM applied_at)::float8 AS applied_s,
       applied_by
FROM purchases
"""
CONSTRAINTS_SQL = """
SELECT conname FROM pg_constraint
WHERE conrelid IN ('items'::regclass, 'purchases'::regclass) AND convalidated
"""
FINAL_IDS_SQL = (
    "SELECT purchase_id FROM purchases WHERE purchase_id = ANY($1::text[])"
    " AND status = ANY($2::text[])"
)


async def read_snapshot(database_url: str) -> Snapshot:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            items = await conn.fetch(ITEMS_SQL)
            purchases = await conn.fetch(PURCHASES_SQL)
            constraints = await conn.fetch(CONSTRAINTS_SQL)
    finally:
        await conn.close()
    return Snapshot(
        items={row["item_id"]: ItemRow(**dict(row)) for row in items},
        purchases=[PurchaseRow(**dict(row)) for row in purchases],
        constraints=frozenset(row["conname"] for row in constraints),
    )


async def await_finals(database_url: str, purchase_ids: set[str], deadline_s: float) -> set[str]:
    """Poll until every purchase has a final row or the wall clock passes
    `deadline_s`; returns the ones still not final."""
    waiting = set(purchase_ids)
    conn = await asyncpg.connect(database_url)
    try:
        while waiting:
            rows = await conn.fetch(FINAL_IDS_SQL, list(waiting), list(FINAL))
            waiting -= {row["purchase_id"] for row in rows}
            if not waiting or time.time() >= deadline_s:
                break
            await asyncio.sleep(POLL_S)
    finally:
        await conn.close()
    return waiting
