"""Admission: the hot path of design.md, step by step.

claim the idempotency record -> reserve units in a stock shard (with its
reservation record) -> produce to Kafka -> mark the record published -> 202.
A crash between any two steps is repaired by a retry (same purchase id) or by
the reconciler (it republishes reservation records Postgres does not know).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gateway.errors import ApiError
from gateway.hints import ItemHints
from gateway.metrics import GatewayMetrics
from services.errors import UnavailableError
from services.failpoints import failpoint
from services.producer import PRODUCE_TIMEOUT_S, PurchaseProducer
from services.resources import CoreResources
from services.schema import PurchaseMessage, purchase_id_for
from services.stockfilter.filter import Settlement
from services.stockfilter.idempotency import PUBLISHED, IdempotencyRecord, new_claim

# A twin request (same user and key) still mid-admission: how long to wait for it
# (longer than a produce may take, so the twin's outcome is known by then).
TWIN_WAIT_S = PRODUCE_TIMEOUT_S + 1.0
TWIN_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Admitted:
    purchase_id: str
    replayed: bool


class SoldOut(ApiError):
    def __init__(self, item_id: str) -> None:
        super().__init__(409, "sold_out", f"item {item_id} is sold out")


class Admission:
    def __init__(
        self,
        core: CoreResources,
        producer: PurchaseProducer,
        hints: ItemHints,
        metrics: GatewayMetrics,
    ) -> None:
        self.core = core
        self.producer = producer
        self.hints = hints
        self.metrics = metrics
        self.settings = core.settings

    async def replay(self, user_id: str, key: str, item_id: str, quantity: int) -> Admitted | None:
        """An earlier admission of this (user, key), or None when the key is new.

        Looked up before rate limits and the sold-out hint, so a retry gets its
        purchase id whatever the timing.
        """
        purchase_id = purchase_id_for(self.settings.secret, user_id, key)
        earlier = await self.core.idempotency.get(purchase_id)
        if earlier is None:
            return None
        if earlier.state != PUBLISHED and earlier.item_id == item_id:
            # A twin is mid-admission and may still fail: wait for its outcome.
            return await self.admit(user_id, key, item_id, quantity)
        return self._replay(purchase_id, earlier, item_id, quantity)

    def sold_out(self, item_id: str) -> SoldOut:
        self.metrics.sold_out.labels("true").inc()
        return SoldOut(item_id)

    async def admit(self, user_id: str, key: str, item_id: str, quantity: int) -> Admitted:
        purchase_id = purchase_id_for(self.settings.secret, user_id, key)
        claim = new_claim(user_id, item_id, quantity)
        deadline = time.monotonic() + TWIN_WAIT_S
        while True:
            earlier = await self.core.idempotency.claim(purchase_id, claim)
            if earlier is None:
                break
            if earlier.state == PUBLISHED or earlier.item_id != item_id:
                return self._replay(purchase_id, earlier, item_id, quantity)
            self._check_same_request(earlier, item_id, quantity)
            if earlier.age_s > self.settings.reservation_stale_s:
                claim = earlier  # its admitter died mid-way: finish the admission for it
                break
            if time.monotonic() > deadline:
                raise ApiError(
                    409,
                    "in_progress",
                    "the same request is still being admitted",
                    {"Retry-After": "1"},
                )
            await asyncio.sleep(TWIN_POLL_S)
        failpoint(self.settings.failpoint, "gateway.after_claim")
        return await self._reserve_and_publish(purchase_id, claim, user_id, key)

    def _replay(
        self, purchase_id: str, earlier: IdempotencyRecord, item_id: str, quantity: int
    ) -> Admitted:
        self._check_same_request(earlier, item_id, quantity)
        self.metrics.replayed.inc()
        return Admitted(purchase_id, replayed=True)

    @staticmethod
    def _check_same_request(earlier: IdempotencyRecord, item_id: str, quantity: int) -> None:
        if (earlier.item_id, earlier.quantity) != (item_id, quantity):
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
            )

    async def _reserve_and_publish(
        self, purchase_id: str, claim: IdempotencyRecord, user_id: str, key: str
    ) -> Admitted:
        item_id, quantity = claim.item_id, claim.quantity
        admitted_at_ms = int(time.time() * 1000)

        def message_for(shard: int) -> PurchaseMessage:
            return PurchaseMessage(
                purchase_id, user_id, key, item_id, quantity, shard, admitted_at_ms
            )

        reservation = await self.core.stock.reserve(
            item_id,
            purchase_id,
            quantity,
            lambda shard: message_for(shard).encode(),
            skip=self.hints.empty_shards(item_id),
            first=claim.shard if claim.shard >= 0 else None,
        )
        self.hints.mark_empty(item_id, reservation.empty_shards)
        if reservation.shard is None:
            await self.core.idempotency.swap(purchase_id, claim, None)
            if reservation.missing:
                raise UnavailableError(f"stock filter of {item_id} is being rebuilt")
            if len(self.hints.empty_shards(item_id)) >= self.core.stock.shards:
                self.hints.mark_sold_out(item_id)  # every shard is empty, not just short
            self.metrics.sold_out.labels("false").inc()
            raise SoldOut(item_id)
        failpoint(self.settings.failpoint, "gateway.after_reserve")
        message = message_for(reservation.shard)
        await self._publish(message, claim)
        failpoint(self.settings.failpoint, "gateway.after_produce")
        await self.core.idempotency.swap(purchase_id, claim, claim.published(reservation.shard))
        self.metrics.admitted.inc()
        return Admitted(purchase_id, replayed=False)

    async def _publish(self, message: PurchaseMessage, claim: IdempotencyRecord) -> None:
        started = time.perf_counter()
        try:
            await self.producer.publish(message)
        except UnavailableError:
            # Nothing stays reserved: give the units back and forget the claim.
            self.metrics.produce_errors.inc()
            await self.core.stock.settle(
                [
                    Settlement(
                        message.item_id, message.shard, message.purchase_id, message.quantity, True
                    )
                ]
            )
            await self.core.idempotency.swap(message.purchase_id, claim, None)
            raise
        self.metrics.produce_latency.observe(time.perf_counter() - started)
