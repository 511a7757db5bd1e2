"""Applying one partition's batch to Postgres in ONE transaction (invariants 1, 2, 5, 6)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.errors import FencedError, FlashsaleError, UnavailableError
from services.schema import FENCE, PURCHASE
from services.store.db import Connection, database_errors
from services.store.decide import (
    CANCELLED,
    EXPIRED,
    PAID,
    BatchDecisions,
    ItemState,
    Record,
    Target,
    decide,
)
from services.store.fences import pass_fences
from services.store.purchases import RESULTS_CHANNEL, notify_payloads
from services.store.queries import query

# Tries of a batch whose insert lost a purchase to another transaction (apply_batch):
# each loss means the other one committed (or will: a deadlock's survivor), so a
# later try sees its row.
DECIDE_ATTEMPTS = 5


class LostInsertError(FlashsaleError):
    """A purchase of the batch was written meanwhile by another partition's batch."""


@dataclass(frozen=True, slots=True)
class Lease:
    topic: str
    partition: int
    epoch: int
    owner: str = ""


@dataclass(frozen=True, slots=True)
class BatchResult:
    decisions: BatchDecisions
    next_offset: int
    skipped: int  # records below the stored offset: already applied


async def lock_lease(conn: Connection, lease: Lease) -> asyncpg.Record:
    """In the caller's transaction: lock the partition's lease row, FencedError when
    its epoch is not ours any more (the lease moved on: nothing may be written)."""
    row = await conn.fetchrow(query("lock_lease"), lease.topic, lease.partition)
    if row is None or row["epoch"] != lease.epoch:
        held_by = None if row is None else row["epoch"]
        raise FencedError(
            f"partition {lease.partition}: epoch {lease.epoch} is stale (lease at {held_by})"
        )
    return row


async def apply_batch(conn: Connection, lease: Lease, records: list[Record]) -> BatchResult:
    """Lock the lease, check the epoch, decide in offset order, write states, sold and offset.

    A consumer whose epoch is stale (it was paused and lost the partition) raises
    FencedError before it writes anything.

    One purchase (user and key) sent for two items has a copy in two partitions,
    which two owners may decide side by side: both read no row for the key, both
    confirm it, and the second insert waits for the first and is skipped. That
    batch is rolled back and decided again, the copy now a duplicate (its units go
    back to the filter): what it decided after the copy counted a unit not sold.
    Two such purchases in opposite orders in the two batches deadlock instead, and
    Postgres rolls one batch back: decided again too.
    """
    for _ in range(DECIDE_ATTEMPTS):
        try:
            return await _apply_once(conn, lease, records)
        except (LostInsertError, asyncpg.DeadlockDetectedError):
            continue
    raise UnavailableError(f"partition {lease.partition}: purchases kept being written meanwhile")


async def _apply_once(conn: Connection, lease: Lease, records: list[Record]) -> BatchResult:
    async with database_errors(), conn.transaction():
        row = await lock_lease(conn, lease)
        fresh = [r for r in records if r.offset >= row["next_offset"]]
        if not fresh:
            return BatchResult(BatchDecisions(), row["next_offset"], len(records))
        fences = [r.message.idempotency_key for r in fresh if r.message.kind == FENCE]
        asks = [r for r in fresh if r.message.kind != FENCE]
        decisions = await _decide(conn, asks, row["db_now"]) if asks else BatchDecisions()
        await _write(conn, lease, row["log_generation"], decisions)
        if fences:
            # After this batch's purchases: a fence passes with everything before it.
            await pass_fences(conn, lease.topic, lease.partition, fences)
        last = max(fresh, key=lambda r: r.offset)
        next_offset = last.offset + 1
        await conn.execute(
            query("advance_lease"),
            lease.topic,
            lease.partition,
            next_offset,
            last.message.purchase_id,
        )
        for payload in notify_payloads(decisions.notified_ids):
            await conn.execute(query("notify_results"), RESULTS_CHANNEL, payload)
    return BatchResult(decisions, next_offset, len(records) - len(fresh))


async def _decide(conn: Connection, records: list[Record], now: datetime) -> BatchDecisions:
    messages = [r.message for r in records]
    item_ids = sorted({m.item_id for m in messages})
    item_rows = await conn.fetch(query("lock_items"), item_ids)
    items = {
        row["item_id"]: ItemState(row["stock"], row["sold"], row["per_user_limit"], row["hold_s"])
        for row in item_rows
    }
    # A cancel or pay is no request of its own: (user, idempotency key) names purchases only.
    purchases = [m for m in messages if m.kind == PURCHASE]
    requests = sorted({(m.user_id, m.idempotency_key) for m in purchases})
    known_rows = await conn.fetch(
        query("known_requests"), [r[0] for r in requests], [r[1] for r in requests]
    )
    known = {(row["user_id"], row["idempotency_key"]): row["status"] for row in known_rows}
    targets = await _targets(conn, [m.purchase_id for m in messages if m.kind != PURCHASE])
    pairs = sorted(
        {(m.user_id, m.item_id) for m in purchases}
        | {(t.user_id, t.item_id) for t in targets.values()}
    )
    held_rows = await conn.fetch(
        query("confirmed_totals"), [p[0] for p in pairs], [p[1] for p in pairs]
    )
    held = {(row["user_id"], row["item_id"]): row["units"] for row in held_rows}
    return decide(records, items, known, held, targets, now)


async def _targets(conn: Connection, purchase_ids: list[str]) -> dict[str, Target]:
    if not purchase_ids:
        return {}
    rows = await conn.fetch(query("get_purchases"), sorted(set(purchase_ids)))
    return {
        row["purchase_id"]: Target(
            row["purchase_id"],
            row["user_id"],
            row["item_id"],
            row["quantity"],
            row["status"],
            row["pay_by"],
        )
        for row in rows
    }


async def _write(
    conn: Connection, lease: Lease, generation: int, decisions: BatchDecisions
) -> None:
    """Insert final states; sold grows in the same statement by the confirmed rows
    actually inserted. The CHECK (sold <= stock) is the last word: no bug above
    can oversell. Cancellations and expiries go first: the units they free may be
    sold below. Every statement writes its status changes to the outbox. A row not
    inserted was written by another transaction since `_decide` read: LostInsertError."""
    where = (lease.topic, lease.partition)
    for status in (CANCELLED, EXPIRED):
        released = decisions.in_db(status)
        if released:
            ids = [t.purchase_id for t in released]
            await conn.execute(query("release_purchases"), ids, *where, status)
    paid = decisions.in_db(PAID)
    if paid:
        await conn.execute(query("pay_purchases"), [t.purchase_id for t in paid], *where)
    new = decisions.new
    if not new:
        return
    msgs = [d.record.message for d in new]
    final_here = decisions.final_in_batch
    pairs = list(zip(new, msgs, strict=True))
    inserted = await conn.fetchval(
        query("insert_purchases"),
        [m.purchase_id for m in msgs],
        [m.user_id for m in msgs],
        [m.idempotency_key for m in msgs],
        [m.item_id for m in msgs],
        [m.quantity for m in msgs],
        [final_here.get(m.purchase_id, d.status) for d, m in pairs],
        [d.reason for d in new],
        [d.record.offset for d in new],
        [m.admitted_at_ms for m in msgs],
        lease.partition,
        generation,
        lease.epoch,
        lease.owner or None,
        [d.pay_by for d in new],
        lease.topic,
    )
    if inserted != len(new):
        raise LostInsertError(f"{len(new) - inserted} purchase(s) written meanwhile")
