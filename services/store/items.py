"""Items: create, update and read stock in Postgres."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from services.errors import ItemNotFoundError, StockBelowSoldError
from services.store.db import Connection, database_errors
from services.store.queries import query

ITEM_LIST_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class SaleTerms:
    """When an item sells, and for how long a confirmed unit waits for its payment."""

    starts_at: datetime | None = None
    ends_at: datetime | None = None
    hold_s: int | None = None


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    stock: int
    sold: int
    per_user_limit: int
    terms: SaleTerms = SaleTerms()

    @property
    def remaining(self) -> int:
        return self.stock - self.sold

    def as_json(self) -> dict[str, object]:
        return {
            "item_id": self.item_id,
            "stock": self.stock,
            "sold": self.sold,
            "remaining": self.remaining,
            "per_user_limit": self.per_user_limit,
            "starts_at": rfc3339(self.terms.starts_at),
            "ends_at": rfc3339(self.terms.ends_at),
            "hold_s": self.terms.hold_s,
        }

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Item:
        terms = SaleTerms(row["starts_at"], row["ends_at"], row["hold_s"])
        return cls(row["item_id"], row["stock"], row["sold"], row["per_user_limit"], terms)


def rfc3339(moment: datetime | None) -> str | None:
    """UTC with a Z, as api.md writes times; None stays None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ItemWrite:
    """An admin write: the item after it, and its stock before (None: just created)."""

    item: Item
    old_stock: int | None

    @property
    def created(self) -> bool:
        return self.old_stock is None


async def write_item(
    pool: asyncpg.Pool,
    item_id: str,
    stock: int,
    per_user_limit: int,
    terms: SaleTerms = SaleTerms(),
) -> ItemWrite:
    """Create or update an item (a write replaces its terms: unset means none).

    StockBelowSoldError when stock would drop below sold."""
    values = (item_id, stock, per_user_limit, terms.starts_at, terms.ends_at, terms.hold_s)
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        old_stock = await conn.fetchval(query("lock_item"), item_id)
        if old_stock is None:
            row = await conn.fetchrow(query("insert_item"), *values)
            if row is not None:
                return ItemWrite(Item.from_row(row), None)
            # Created by a concurrent write since our read: lock it and update.
            old_stock = await conn.fetchval(query("lock_item"), item_id)
        row = await conn.fetchrow(query("update_item"), *values)
    if row is None:
        current = await get_item(pool, item_id)
        raise StockBelowSoldError(
            f"item {item_id} has sold {current.sold} units; stock cannot be {stock}"
        )
    return ItemWrite(Item.from_row(row), int(old_stock))


async def upsert_item(
    pool: asyncpg.Pool, item_id: str, stock: int, per_user_limit: int
) -> tuple[Item, bool]:
    """(item, created). StockBelowSoldError when stock would drop below sold."""
    written = await write_item(pool, item_id, stock, per_user_limit)
    return written.item, written.created


async def get_item(pool: asyncpg.Pool, item_id: str) -> Item:
    async with database_errors():
        row = await pool.fetchrow(query("get_item"), item_id)
    if row is None:
        raise ItemNotFoundError(f"no item {item_id}")
    return Item.from_row(row)


async def list_items(pool: asyncpg.Pool, limit: int = ITEM_LIST_LIMIT) -> list[Item]:
    async with database_errors():
        rows = await pool.fetch(query("list_items"), limit)
    return [Item.from_row(row) for row in rows]


async def get_items(conn: Connection, item_ids: list[str]) -> dict[str, Item]:
    async with database_errors():
        rows = await conn.fetch(query("get_items"), item_ids)
    return {row["item_id"]: Item.from_row(row) for row in rows}


async def item_ids_after(pool: asyncpg.Pool, after: str, limit: int) -> list[str]:
    async with database_errors():
        rows = await pool.fetch(query("item_ids_after"), after, limit)
    return [row["item_id"] for row in rows]


async def recent_items(pool: asyncpg.Pool, limit: int) -> list[Item]:
    async with database_errors():
        rows = await pool.fetch(query("recent_items"), limit)
    return [Item.from_row(row) for row in rows]
