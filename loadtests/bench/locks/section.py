"""The critical section of the articles, and flashsale's own path for the same sale.

Lock designs: read stock and sold; when a unit remains, add one to sold and
insert the order. Nothing in Postgres stops an oversell (no CHECK): only the
lock does, or, for the fenced design, the token the write carries. `between`
runs after the read and before the write: that is where a fault stops the holder.

flashsale: no lock. A worker takes the partition's lease (as a rebalance
does, fencing the one before), then applies its one-purchase batch through the
real `apply_batch`, which decides against the stock in Postgres.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable

import asyncpg

from loadtests.bench.locks.designs import Opened
from services.errors import FencedError
from services.schema import PurchaseMessage, purchase_id_for
from services.store.batch import Lease, apply_batch
from services.store.db import Connection
from services.store.decide import Record
from services.store.leases import acquire_lease
from services.store.purchases import item_counts

Between = Callable[[], Awaitable[None]]
PURCHASE_ID_SECRET = "bench-locks"


class Outcome(enum.StrEnum):
    SOLD = "sold"
    SOLD_OUT = "sold_out"
    FENCED = "fenced"  # the storage refused a stale holder's write


async def sell(opened: Opened, item_id: str, user_id: str, key: str, between: Between) -> Outcome:
    """One purchase under the design's lock (Busy when the lock stayed taken)."""
    async with opened.design.hold(item_id) as held:
        if held.conn is not None:
            return await _section(opened, held.conn, item_id, user_id, key, held.token, between)
        async with opened.pool.acquire() as conn:
            return await _section(opened, conn, item_id, user_id, key, held.token, between)


async def _section(
    opened: Opened,
    conn: Connection,
    item_id: str,
    user_id: str,
    key: str,
    token: int | None,
    between: Between,
) -> Outcome:
    queries = opened.queries
    if token is None:
        row = await conn.fetchrow(queries["read"], item_id)
    else:
        row = await conn.fetchrow(queries["fenced_read"], item_id, token)
        if row is None:
            return Outcome.FENCED
    if row is None:
        raise LookupError(f"no bench item {item_id}")
    if row["sold"] >= row["stock"]:
        return Outcome.SOLD_OUT
    await between()
    async with conn.transaction():
        if token is None:
            await conn.execute(queries["add_sold"], item_id)
        elif await conn.fetchval(queries["fenced_add_sold"], item_id, token) is None:
            return Outcome.FENCED
        await conn.execute(queries["insert_order"], item_id, user_id, key)
    return Outcome.SOLD


async def sell_by_lease(
    pool: asyncpg.Pool, topic: str, item_id: str, user_id: str, key: str, between: Between
) -> Outcome:
    """flashsale's path: take the partition's lease, then apply a one-purchase batch."""
    grant = await acquire_lease(pool, topic, 0, f"bench-{user_id}")
    message = PurchaseMessage(
        purchase_id_for(PURCHASE_ID_SECRET, user_id, key),
        user_id,
        key,
        item_id,
        1,
        0,
        int(time.time() * 1000),
    )
    await between()
    try:
        async with pool.acquire() as conn:
            result = await apply_batch(
                conn, Lease(topic, 0, grant.epoch), [Record(grant.next_offset, message)]
            )
    except FencedError:
        return Outcome.FENCED
    # The batch decided against the stock in Postgres: confirmed, or rejected.
    if result.decisions.sold_by_item.get(item_id, 0) > 0:
        return Outcome.SOLD
    return Outcome.SOLD_OUT


async def confirmed(pool: asyncpg.Pool, item_id: str) -> int:
    return int((await item_counts(pool, item_id)).get("confirmed", (0, 0))[1])
