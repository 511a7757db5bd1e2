"""After a run: every unit a cancel or an expiry returned was sold again or is back
in the stock filter (design.md, "The sale's lifecycle"), and after a chaos run no
unit leaked from the filter nor was invented in it (`settle_filters`).

It reads Redis by the filter's key names and Postgres with the checker's own
SQL (invariants.sql), not through the stock filter or the store it checks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

from loadtests.checks.lifecycle import POLL_S, QUERIES, poll
from loadtests.sale.target import FilterAccess
from services.schema import MessageError, PurchaseMessage
from services.stockfilter.client import RedisClient, close_redis, open_redis
from services.stockfilter.keys import reservations_key, stock_key

# Statuses whose units are counted in items.sold.
HELD = ("confirmed", "paid")


@dataclass(frozen=True, slots=True)
class FilterReading:
    item_id: str
    # Units in the shards that exist; None: some shard is missing.
    filter_units: int | None
    # Units in reservation records of purchases not (yet) counted in sold.
    in_flight: int
    remaining: int  # stock - sold, by Postgres

    @property
    def drift(self) -> int:
        """Units the filter holds beyond what Postgres says is left (negative: lacks)."""
        return (self.filter_units or 0) + self.in_flight - self.remaining

    @property
    def agrees(self) -> bool:
        return self.filter_units is not None and self.drift == 0


async def read_filter(
    redis: RedisClient, conn: asyncpg.Connection, item_id: str, shards: int
) -> FilterReading:
    """Redis first, Postgres second: a record settled in between is still counted
    as in flight, and its purchase's units are then also in sold or back."""
    units: list[int | None] = []
    records: list[PurchaseMessage] = []
    for shard in range(shards):
        raw = await redis.get(stock_key(item_id, shard))
        units.append(None if raw is None else int(raw))
        for value in (await redis.hgetall(reservations_key(item_id, shard))).values():
            try:
                raw_record = value.encode() if isinstance(value, str) else value
                records.append(PurchaseMessage.decode(raw_record))
            except MessageError:
                continue  # the reconciler logs and drops these; they hold no units we can name
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        item = await conn.fetchrow(QUERIES["item_row"], item_id)
        rows = await conn.fetch(QUERIES["purchase_statuses"], [m.purchase_id for m in records])
    statuses = {row["purchase_id"]: row["status"] for row in rows}
    in_flight = sum(m.quantity for m in records if statuses.get(m.purchase_id) not in HELD)
    present = [max(u, 0) for u in units if u is not None]
    return FilterReading(
        item_id,
        None if len(present) < len(units) else sum(present),
        in_flight,
        0 if item is None else item["stock"] - item["sold"],
    )


async def check_filter(
    conn: asyncpg.Connection,
    access: FilterAccess,
    item_ids: list[str],
    violations: list[str],
    settle_wait_s: float,
) -> list[FilterReading]:
    """Every unit a cancel or an expiry returned was sold again or is back in the
    filter: filter units + units in flight == stock - sold, once the consumers
    settled their last batch (waited for at most `settle_wait_s`)."""
    redis = open_redis(access.redis_url, access.redis_cluster)
    readings: list[FilterReading] = []
    try:
        for item_id in item_ids:
            reading = await read_filter(redis, conn, item_id, access.shards)

            async def agrees(item_id: str = item_id) -> bool:
                nonlocal reading
                reading = await read_filter(redis, conn, item_id, access.shards)
                return reading.agrees

            await poll(agrees, settle_wait_s)
            readings.append(reading)
            violation = _drift_violation(reading)
            if violation:
                violations.append(violation)
    finally:
        await close_redis(redis)
    return readings


async def settle_filters(
    access: FilterAccess, database_url: str, item_ids: list[str], timeout_s: float
) -> list[FilterReading]:
    """Read every item's filter until all agree with Postgres or `timeout_s` passed
    (one deadline for all, not one per item); the last reading of each item.

    A reconciler repairs a drift only after some idle passes, so a drift may be
    seen for a while after the run went quiet; one that outlives the deadline is
    a unit leaked or invented."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    redis = open_redis(access.redis_url, access.redis_cluster)
    conn = await asyncpg.connect(database_url)
    readings: dict[str, FilterReading] = {}
    try:
        waiting = list(item_ids)
        while True:
            for item_id in waiting:
                readings[item_id] = await read_filter(redis, conn, item_id, access.shards)
            waiting = [item_id for item_id in waiting if not readings[item_id].agrees]
            if not waiting or loop.time() >= deadline:
                break
            await asyncio.sleep(POLL_S)
    finally:
        await conn.close()
        await close_redis(redis)
    return [readings[item_id] for item_id in item_ids]


def _drift_violation(reading: FilterReading) -> str | None:
    item_id = reading.item_id
    if reading.filter_units is None:
        return f"FILTER: {item_id}: a stock filter shard is missing in Redis"
    if reading.drift == 0:
        return None
    sides = f"filter {reading.filter_units} + in flight {reading.in_flight}"
    if reading.drift > 0:
        return (
            f"FILTER: {item_id}: {sides} > stock - sold {reading.remaining}:"
            f" {reading.drift} units went back on sale twice"
        )
    return (
        f"FILTER: {item_id}: {sides} < stock - sold {reading.remaining}:"
        f" {-reading.drift} returned units neither sold again nor back on sale"
    )
