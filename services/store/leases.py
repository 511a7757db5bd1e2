"""Partition leases: epochs that fence zombies, offsets stored beside the orders."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.store.db import database_errors
from services.store.queries import query


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    epoch: int
    next_offset: int
    log_generation: int
    last_purchase_id: str | None = None


@dataclass(frozen=True, slots=True)
class LeaseRow:
    partition: int
    epoch: int
    owner: str | None
    next_offset: int
    log_generation: int


async def ensure_leases(pool: asyncpg.Pool, topic: str, partitions: int) -> None:
    async with database_errors():
        await pool.execute(query("ensure_leases"), topic, partitions)


async def acquire_lease(pool: asyncpg.Pool, topic: str, partition: int, owner: str) -> LeaseGrant:
    async with database_errors():
        row = await pool.fetchrow(query("acquire_lease"), topic, partition, owner)
        if row is None:
            await pool.execute(query("ensure_leases"), topic, partition + 1)
            row = await pool.fetchrow(query("acquire_lease"), topic, partition, owner)
    assert row is not None
    return LeaseGrant(
        row["epoch"], row["next_offset"], row["log_generation"], row["last_purchase_id"]
    )


async def acquire_quiet_lease(
    pool: asyncpg.Pool, topic: str, partition: int, owner: str, quiet_for_s: float
) -> LeaseGrant | None:
    """Bump the epoch only if nobody wrote the lease row in the last `quiet_for_s`
    seconds (a negative value always bumps); None when refused."""
    async with database_errors():
        row = await pool.fetchrow(
            query("acquire_quiet_lease"), topic, partition, owner, quiet_for_s
        )
    if row is None:
        return None
    return LeaseGrant(
        row["epoch"], row["next_offset"], row["log_generation"], row["last_purchase_id"]
    )


async def start_log_generation(
    pool: asyncpg.Pool, topic: str, partition: int, epoch: int, from_offset: int
) -> LeaseGrant | None:
    """Record that the broker lost this partition's log; None when we are fenced."""
    async with database_errors():
        row = await pool.fetchrow(
            query("start_log_generation"), topic, partition, epoch, from_offset
        )
    if row is None:
        return None
    return LeaseGrant(row["epoch"], row["next_offset"], row["log_generation"])


async def release_leases_beyond(pool: asyncpg.Pool, topic: str, partitions: int) -> None:
    """Forget the owners of rows for partitions >= `partitions` (the topic has fewer now).

    The epoch stays: were the partition to come back, its next owner still fences
    any old one."""
    async with database_errors():
        await pool.execute(query("release_leases_beyond"), topic, partitions)


async def list_leases(
    pool: asyncpg.Pool, topic: str, partitions: int | None = None
) -> list[LeaseRow]:
    """Every lease row of `topic`, or only those of its first `partitions` partitions."""
    async with database_errors():
        rows = await pool.fetch(query("list_leases"), topic, partitions)
    return [
        LeaseRow(
            r["kafka_partition"], r["epoch"], r["owner"], r["next_offset"], r["log_generation"]
        )
        for r in rows
    ]
