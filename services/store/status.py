"""What `flashsale status` reads from Postgres: the items that matter now, and throughput."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.store.db import database_errors
from services.store.items import Item
from services.store.queries import query


@dataclass(frozen=True, slots=True)
class ActiveItem:
    item: Item
    applied: int  # purchases applied in the window


@dataclass(frozen=True, slots=True)
class ItemCounts:
    total: int
    on_sale: int


async def active_items(pool: asyncpg.Pool, window_s: float, limit: int) -> list[ActiveItem]:
    """Items on sale now, the most purchases applied in the last `window_s` first."""
    async with database_errors():
        rows = await pool.fetch(query("status_items"), window_s, limit)
    return [ActiveItem(Item.from_row(row), row["applied"]) for row in rows]


async def item_counts(pool: asyncpg.Pool, window_s: float) -> ItemCounts:
    async with database_errors():
        row = await pool.fetchrow(query("status_item_counts"), window_s)
    assert row is not None
    return ItemCounts(row["total"], row["on_sale"])


async def applied_since(pool: asyncpg.Pool, window_s: float) -> int:
    async with database_errors():
        count = await pool.fetchval(query("applied_since"), window_s)
    return int(count)
