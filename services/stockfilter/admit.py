"""The common admission's one round trip: claim the idempotency record and
reserve units on the shard the claim names, in one Lua call.

On one Redis node a script may touch keys of any hash slot; on a cluster the
record ({purchase id}) and the shard ({item:shard}) live in different slots, so
there the claim and the reserve stay two calls, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.stockfilter.client import redis_errors
from services.stockfilter.filter import StockFilter
from services.stockfilter.idempotency import IdempotencyRecord, IdempotencyStore
from services.stockfilter.keys import idempotency_key, reservations_key, stock_key
from services.stockfilter.scripts import register


@dataclass(frozen=True, slots=True)
class FirstTry:
    """`earlier`: the record already there (nothing claimed, nothing reserved);
    else the claim is ours and (code, left) is the reserve on its shard."""

    earlier: IdempotencyRecord | None
    code: int = 0
    left: int = 0


class ClaimAndReserve:
    def __init__(self, idempotency: IdempotencyStore, stock: StockFilter) -> None:
        self.idempotency = idempotency
        self.stock = stock
        self.one_call = idempotency.pipe.enabled  # off on a cluster: see the docstring
        self._script = register(idempotency.redis, "claim_reserve.lua")

    async def __call__(
        self, purchase_id: str, claim: IdempotencyRecord, reservation: bytes
    ) -> FirstTry:
        if not self.one_call:
            return await self._two_calls(purchase_id, claim, reservation)
        keys = [
            idempotency_key(purchase_id),
            stock_key(claim.item_id, claim.shard),
            reservations_key(claim.item_id, claim.shard),
        ]
        args = [
            claim.encode(),
            self.idempotency.ttl_s,
            purchase_id,
            claim.quantity,
            reservation,
        ]
        async with redis_errors():
            # claim_reserve.lua knows its own claim and its own reservation.
            reply = await self.idempotency.pipe.script(self._script, keys, args, idempotent=True)
        if int(reply[0]) == 0:
            return FirstTry(IdempotencyRecord.decode(reply[1]))
        return FirstTry(None, int(reply[1]), int(reply[2]))

    async def _two_calls(
        self, purchase_id: str, claim: IdempotencyRecord, reservation: bytes
    ) -> FirstTry:
        earlier = await self.idempotency.claim(purchase_id, claim)
        if earlier is not None:
            return FirstTry(earlier)
        code, left = await self.stock.reserve_at(
            claim.item_id, claim.shard, purchase_id, claim.quantity, reservation
        )
        return FirstTry(None, code, left)
