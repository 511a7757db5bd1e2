"""Fences through the purchases log: which partitions passed a Redis incarnation's fence."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.store.db import Connection, database_errors
from services.store.queries import query


@dataclass(frozen=True, slots=True)
class FenceVerdict:
    passed: frozenset[int]  # partitions whose log passed the fence
    known: bool  # Postgres knows the purchase asked about


async def pass_fences(conn: Connection, topic: str, partition: int, tokens: list[str]) -> None:
    """In the caller's batch transaction: this partition's log passed these fences."""
    await conn.execute(query("pass_fences"), tokens, topic, partition)


async def fence_verdict(
    pool: asyncpg.Pool, token: str, topic: str, purchase_id: str
) -> FenceVerdict:
    """Read in one snapshot (see fences.sql)."""
    async with database_errors():
        row = await pool.fetchrow(query("fence_verdict"), token, topic, purchase_id)
    assert row is not None
    return FenceVerdict(frozenset(row["passed"]), bool(row["known"]))
