"""Reading purchases' final states from Postgres."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.store.db import Connection, database_errors
from services.store.queries import query

RESULTS_CHANNEL = "flashsale_results"
# pg_notify payloads must stay under 8000 bytes.
NOTIFY_PAYLOAD_BYTES = 7000


@dataclass(frozen=True, slots=True)
class PurchaseRow:
    purchase_id: str
    user_id: str
    item_id: str
    quantity: int
    status: str
    reason: str | None
    # For items with a hold: when a confirmed purchase expires unless paid.
    pay_by: datetime | None = None


async def get_purchase(pool: asyncpg.Pool, purchase_id: str) -> PurchaseRow | None:
    async with database_errors():
        row = await pool.fetchrow(query("get_purchase"), purchase_id)
    return None if row is None else row_to_purchase(row)


def row_to_purchase(row: asyncpg.Record) -> PurchaseRow:
    return PurchaseRow(
        row["purchase_id"],
        row["user_id"],
        row["item_id"],
        row["quantity"],
        row["status"],
        row["reason"],
        row["pay_by"],
    )


@dataclass(frozen=True, slots=True)
class KnownStatus:
    """A purchase's final state and the item it was decided for."""

    item_id: str
    status: str
    reason: str | None = None


async def known_statuses(
    conn: Connection | asyncpg.Pool, purchase_ids: list[str]
) -> dict[str, KnownStatus]:
    async with database_errors():
        rows = await conn.fetch(query("known_purchases"), purchase_ids)
    return {
        row["purchase_id"]: KnownStatus(row["item_id"], row["status"], row["reason"])
        for row in rows
    }


async def item_counts(pool: asyncpg.Pool, item_id: str) -> dict[str, tuple[int, int]]:
    """status -> (purchases, units) for one item."""
    async with database_errors():
        rows = await pool.fetch(query("count_purchases"), item_id)
    return {row["status"]: (row["purchases"], row["units"]) for row in rows}


def notify_payloads(purchase_ids: list[str]) -> list[str]:
    """Comma-joined purchase ids, split to fit pg_notify's payload limit."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for purchase_id in purchase_ids:
        if current and size + len(purchase_id) + 1 > NOTIFY_PAYLOAD_BYTES:
            payloads.append(",".join(current))
            current, size = [], 0
        current.append(purchase_id)
        size += len(purchase_id) + 1
    if current:
        payloads.append(",".join(current))
    return payloads
