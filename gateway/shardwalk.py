"""Admission's reserve step: the claim's own shard first, then the item's other
shards, until one holds the units (gateway/admission.py calls it; it calls
nothing of admission's back)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.admission_rules import in_progress
from gateway.hints import ItemHints
from services.resources import CoreResources
from services.schema import PurchaseMessage
from services.stockfilter.admit import FirstTry
from services.stockfilter.filter import ALREADY_RESERVED, RESERVED, SHARD_MISSING
from services.stockfilter.idempotency import IdempotencyRecord


@dataclass(frozen=True, slots=True)
class Reserved:
    """Where a reservation landed (shard None: nowhere) and the claim naming it."""

    shard: int | None
    claim: IdempotencyRecord
    empty_shards: frozenset[int] = frozenset()
    missing: bool = False
    # The shard held this purchase's reservation already (ALREADY_RESERVED): an
    # earlier request of the key made it, and may have published it.
    before: bool = False


class ShardWalk:
    def __init__(self, core: CoreResources, hints: ItemHints) -> None:
        self.core = core
        self.hints = hints

    async def reserve(
        self,
        purchase_id: str,
        claim: IdempotencyRecord,
        message_for: Callable[[int], PurchaseMessage],
        tried: FirstTry | None = None,
    ) -> Reserved:
        """Try the claim's shard (`tried`: done already, with the claim), then the
        others; the claim names each shard before it is tried, so whoever takes this
        admission over looks in the right place."""
        item_id, quantity = claim.item_id, claim.quantity
        empty: set[int] = set()
        missing = False
        for shard in self.core.stock.shard_order(claim.shard, self.hints.empty_shards(item_id)):
            if shard != claim.shard:
                moved = claim.at_shard(shard)
                if not await self.core.idempotency.swap(purchase_id, claim, moved):
                    raise in_progress()  # taken over while we were slow: it decides now
                claim = moved
            if tried is not None:  # the claim's own shard comes first in the order
                code, left, tried = tried.code, tried.left, None
            else:
                code, left = await self.core.stock.reserve_at(
                    item_id, shard, purchase_id, quantity, message_for(shard).encode()
                )
            if code in (RESERVED, ALREADY_RESERVED):
                before = code == ALREADY_RESERVED
                return Reserved(shard, claim, frozenset(empty), missing, before)
            if code == SHARD_MISSING:
                missing = True  # not "empty": Redis lost it, and the reconciler refills it
            elif left <= 0:
                empty.add(shard)  # too few units for this request is not "empty"
        return Reserved(None, claim, frozenset(empty), missing)
