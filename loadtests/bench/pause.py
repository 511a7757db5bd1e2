"""`lock_under_pause`: a worker stalls past its lease; does the design oversell?

Both halves are measured, not assumed:

* redis_lock: a baseline server whose every lock holder stalls between reading
  `sold` and writing the order for longer than the lock's TTL. The lock expires,
  the next waiter takes it and reads the same `sold`; the compare-and-delete
  release is correct and does not help. Oversold units are counted in Postgres.
* flashsale: the same stall in the consumer's place. Several "consumers" take
  the partition's lease one after the other (each bump fences the one before,
  as a rebalance does), each stalls past the takeover holding the same batch of
  the log, then each calls the real `apply_batch`. Confirmed units are counted
  in Postgres.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

import asyncpg

from services.errors import FencedError
from services.schema import PurchaseMessage, purchase_id_for
from services.store.batch import Lease, apply_batch
from services.store.decide import Record
from services.store.items import upsert_item
from services.store.leases import acquire_lease, ensure_leases
from services.store.purchases import item_counts

PAUSE_STOCK = 10
# The lock's TTL and the holder's stall: many TTLs long, so several holders
# overlap inside the critical section.
PAUSE_LOCK_TTL_MS = 50
PAUSE_MS = 400
PAUSE_REQUESTS = 40
PAUSE_CONSUMERS = 8
# One "consumer" takes the lease every TTL, as the lock's waiters do.
TAKEOVER_EVERY_S = PAUSE_LOCK_TTL_MS / 1000


@dataclass(frozen=True, slots=True)
class ZombieFigures:
    stock: int
    confirmed: int
    batches_applied: int
    batches_fenced: int

    @property
    def oversold(self) -> int:
        return max(0, self.confirmed - self.stock)


async def flashsale_under_pause(
    pool: asyncpg.Pool, secret: str, stock: int = PAUSE_STOCK
) -> ZombieFigures:
    """Stale consumers with a batch of 2 x stock purchases each try to commit it."""
    run = secrets.token_hex(3)
    topic, item_id = f"bench-pause-{run}", f"bench-pause-{run}"
    await ensure_leases(pool, topic, 1)
    await upsert_item(pool, item_id, stock, 1)
    log = _log_slice(secret, item_id, run, 2 * stock)
    applied = await asyncio.gather(
        *(_stalled_consumer(pool, topic, index, log) for index in range(PAUSE_CONSUMERS))
    )
    counts = await item_counts(pool, item_id)
    return ZombieFigures(
        stock=stock,
        confirmed=int(counts.get("confirmed", (0, 0))[1]),
        batches_applied=sum(applied),
        batches_fenced=len(applied) - sum(applied),
    )


def _log_slice(secret: str, item_id: str, run: str, count: int) -> list[PurchaseMessage]:
    """The same messages every consumer fetched: one buyer each, one unit each."""
    now_ms = int(time.time() * 1000)
    messages = []
    for buyer in range(count):
        user_id, key = f"pause-{run}-{buyer}", f"k-{buyer}"
        messages.append(
            PurchaseMessage(
                purchase_id_for(secret, user_id, key), user_id, key, item_id, 1, 0, now_ms
            )
        )
    return messages


async def _stalled_consumer(
    pool: asyncpg.Pool, topic: str, index: int, log: list[PurchaseMessage]
) -> bool:
    """Take the lease, stall, then commit: True when the batch was applied."""
    await asyncio.sleep(index * TAKEOVER_EVERY_S)
    grant = await acquire_lease(pool, topic, 0, f"bench-stalled-{index}")
    records = [Record(grant.next_offset + n, message) for n, message in enumerate(log)]
    await asyncio.sleep(PAUSE_MS / 1000)
    try:
        async with pool.acquire() as conn:
            await apply_batch(conn, Lease(topic, 0, grant.epoch), records)
    except FencedError:
        return False
    return True
