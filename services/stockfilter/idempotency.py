"""Idempotency records: (user, key) -> the purchase it named, in Redis.

The record is an efficiency: if Redis forgets it, the purchase id (a keyed hash
of user and key) and Postgres' unique key still make a retry a no-op.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace

import orjson

from services.stockfilter.autopipe import AutoPipeline
from services.stockfilter.client import RedisClient, redis_errors
from services.stockfilter.keys import idempotency_key
from services.stockfilter.scripts import register

CLAIMED = "claimed"
PUBLISHED = "published"
# mark_published wrote the record again: Redis had lost the claim.
REWRITTEN = 2


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    user_id: str
    item_id: str
    quantity: int
    state: str
    shard: int
    ts_ms: int
    nonce: str
    # The bytes in Redis (read, or written by encode): unclaim.lua compares them
    # byte for byte, so a record another gateway wrote (another encoder, say an
    # older version's json.dumps escaping non-ASCII) is swapped as it was read.
    # Not copied by replace(): a changed record is encoded anew.
    _stored: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def encode(self) -> bytes:
        if self._stored is None:
            object.__setattr__(self, "_stored", self._encoded())
        assert self._stored is not None
        return self._stored

    def _encoded(self) -> bytes:
        # The key order must never vary (see _stored).
        return orjson.dumps(
            {
                "item_id": self.item_id,
                "nonce": self.nonce,
                "quantity": self.quantity,
                "shard": self.shard,
                "state": self.state,
                "ts_ms": self.ts_ms,
                "user_id": self.user_id,
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> IdempotencyRecord:
        record = cls(**orjson.loads(raw))
        object.__setattr__(record, "_stored", raw if isinstance(raw, bytes) else raw.encode())
        return record

    @property
    def age_s(self) -> float:
        return time.time() - self.ts_ms / 1000

    def published(self, shard: int) -> IdempotencyRecord:
        return replace(self, state=PUBLISHED, shard=shard)

    def at_shard(self, shard: int) -> IdempotencyRecord:
        """The claim before its admitter tries another shard: a reservation of this
        purchase can only ever be at the shard its claim names."""
        return replace(self, shard=shard)

    def renewed(self) -> IdempotencyRecord:
        """The claim taken over from an admitter that looks dead: a new owner and age."""
        return replace(self, ts_ms=int(time.time() * 1000), nonce=secrets.token_hex(8))


def new_claim(user_id: str, item_id: str, quantity: int, shard: int = -1) -> IdempotencyRecord:
    return IdempotencyRecord(
        user_id, item_id, quantity, CLAIMED, shard, int(time.time() * 1000), secrets.token_hex(8)
    )


class IdempotencyStore:
    def __init__(self, redis: RedisClient, ttl_s: int, pipe: AutoPipeline | None = None) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.pipe = pipe or AutoPipeline(redis)
        self._claim = register(redis, "claim.lua")
        self._swap = register(redis, "unclaim.lua")

    async def claim(self, purchase_id: str, record: IdempotencyRecord) -> IdempotencyRecord | None:
        """None when `record` is now the claim; else the record already there."""
        async with redis_errors():
            # Safe to run twice (claim.lua knows its own claim): a resend after a
            # lost reply, by the pipeline or by redis-py's retry, claims once.
            won, existing = await self.pipe.script(
                self._claim,
                [idempotency_key(purchase_id)],
                [record.encode(), self.ttl_s],
                idempotent=True,
            )
        return None if int(won) == 1 else IdempotencyRecord.decode(existing)

    async def get(self, purchase_id: str) -> IdempotencyRecord | None:
        async with redis_errors():
            raw = await self.pipe.get(idempotency_key(purchase_id))
        return None if raw is None else IdempotencyRecord.decode(raw)

    async def swap(
        self, purchase_id: str, ours: IdempotencyRecord, new: IdempotencyRecord | None
    ) -> bool:
        """Replace (or, with None, drop) the record only if it is still `ours`."""
        return await self._swap_script(purchase_id, ours, new, write_if_gone=False) > 0

    async def mark_published(
        self, purchase_id: str, ours: IdempotencyRecord, published: IdempotencyRecord
    ) -> int:
        """Swap our claim for its published record, or write that record again when
        Redis lost the claim meanwhile (its message is in Kafka: a GET must find
        it, docs/faults.md). 1 swapped, REWRITTEN, 0 taken over by another."""
        return await self._swap_script(purchase_id, ours, published, write_if_gone=True)

    async def _swap_script(
        self,
        purchase_id: str,
        ours: IdempotencyRecord,
        new: IdempotencyRecord | None,
        write_if_gone: bool,
    ) -> int:
        async with redis_errors():
            done = await self.pipe.script(
                self._swap,
                [idempotency_key(purchase_id)],
                [
                    ours.encode(),
                    "" if new is None else new.encode(),
                    self.ttl_s,
                    "1" if write_if_gone else "0",
                ],
                # A replacement run twice answers alike (unclaim.lua); a drop does not.
                idempotent=new is not None,
            )
        return int(done)
