"""Has Redis forgotten anything? Incarnation markers, read with the records they vouch for.

An idempotency record that Redis does not hold proves nothing by itself: Redis
may have lost it (a restart without persistence or from a snapshot that lacks
the last writes, FLUSHALL, a failover to a replica that had not received them,
an eviction). A marker written once per incarnation of Redis' memory tells the
two apart: read in the same atomic call as the missing record (lookup.lua), a
marker that is still the one seen means nothing written since it was set was
lost, so a record written after it would be there.
A new marker means Redis lost data: its token names a fence that the gateway
produces through the purchases log (gateway/lookups.py).

On one node there is one marker. On a cluster each node loses its own slots'
data, so there is a marker per hash slot, in the slot of the records it vouches
for, and a loss costs one fence per slot looked up since.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from services.stockfilter.client import RedisClient, redis_errors
from services.stockfilter.idempotency import IdempotencyRecord, IdempotencyStore
from services.stockfilter.keys import idempotency_key, incarnation_key
from services.stockfilter.scripts import register

TOKEN_BYTES = 8


@dataclass(frozen=True, slots=True)
class Sighting:
    """A purchase's idempotency record, or (None) the incarnation of the Redis that
    holds none; `new`: this read found Redis had lost data."""

    record: IdempotencyRecord | None
    incarnation: str = ""
    new: bool = False


class Incarnations:
    def __init__(self, redis: RedisClient, idempotency: IdempotencyStore, cluster: bool) -> None:
        self.redis = redis
        self.cluster = cluster
        self._lookup = register(redis, "lookup.lua")
        self.idempotency = idempotency
        if cluster:
            slot_tags()  # computed once here, at startup, not in the first request

    async def lookup(self, purchase_id: str) -> Sighting:
        # Most lookups find the record: a plain (pipelined) GET is a tenth of the
        # script's cost in Redis. A miss asks again, with the marker, atomically.
        found = await self.idempotency.get(purchase_id)
        if found is not None:
            return Sighting(found)
        record_key = idempotency_key(purchase_id)
        keys = [record_key, self.marker_key(record_key)]
        async with redis_errors():
            # Safe to run twice: a resend finds the marker the first run wrote.
            raw, token, written = await self.idempotency.pipe.script(
                self._lookup, keys, [secrets.token_hex(TOKEN_BYTES)], idempotent=True
            )
        if raw is not None:
            return Sighting(IdempotencyRecord.decode(raw))
        text = token.decode() if isinstance(token, bytes) else str(token)
        return Sighting(None, text, int(written) == 1)

    def marker_key(self, record_key: str) -> str:
        if not self.cluster:
            return incarnation_key()
        return incarnation_key(slot_tags()[key_slot(record_key.encode())])


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """For each cluster hash slot, a short hash tag that maps to it (computed once,
    about 0.1 s: some 110,000 CRC16s)."""
    tags: dict[int, str] = {}
    candidate = 0
    while len(tags) < REDIS_CLUSTER_HASH_SLOTS:
        tags.setdefault(key_slot(str(candidate).encode()), str(candidate))
        candidate += 1
    return tuple(tags[slot] for slot in range(REDIS_CLUSTER_HASH_SLOTS))
