"""A produce that failed: answer 503 only when it is true, give units back once.

api.md promises that a 503 leaves nothing reserved, and so nothing charged later.
Which answer is true depends on where the produce failed (services/producer.py):

* certain (the record never entered the producer's batch): give the units back
  and answer 503; a retry of the key is a fresh admission.
* uncertain (it may be in the broker's log, and be consumed): first make the
  purchase final in Postgres (rejected, `unavailable`), so a late copy is a
  duplicate of a decided purchase and charges nothing; then give the units back
  and answer 503. A retry of the key answers 202, and its purchase reads
  `rejected: unavailable`. When the purchase has a row already (its message was
  applied first), that row is the answer: 202.
* Postgres cannot be written either: nothing can be promised, so the reservation
  record stays and the answer is 202; the reconciler republishes the record and
  the purchase is decided, as every 202 is.

A give-back that fails leaves at most a reservation record behind, whose purchase
is then final in Postgres (written before, or after the failure): the reconciler
settles it and returns its units (services/reconciler.py). Units are returned once
whoever settles first: settle.lua returns a record's units only when it drops it.
"""

from __future__ import annotations

import logging
import time

from gateway.admission_rules import in_progress
from gateway.metrics import GatewayMetrics
from services.errors import ProduceUncertainError, UnavailableError
from services.failpoints import (
    FENCE_FAILS,
    GIVEBACK_FAILS,
    PRODUCE_DELIVERED_LATE,
    PRODUCE_FAILS,
    PRODUCE_LOST_ACK,
    fails_here,
)
from services.producer import PurchaseProducer
from services.resources import CoreResources
from services.schema import PurchaseMessage
from services.stockfilter.filter import Settlement
from services.stockfilter.idempotency import IdempotencyRecord
from services.store.decide import REJECTED
from services.store.unadmitted import Fence, reject_unadmitted

log = logging.getLogger(__name__)

# Outcomes (metric labels) of a failed produce.
GIVEN_BACK = "given_back"  # certain failure: units back, 503
FENCED = "fenced"  # made final (rejected: unavailable) in Postgres, units back, 503
DECIDED = "decided"  # Postgres had the purchase already: 202
KEPT = "kept"  # nothing could be promised, or the reservation is an earlier request's: 202
TAKEN_OVER = "taken_over"  # another request admits the purchase now: 409 in_progress
OUTCOMES = (GIVEN_BACK, FENCED, DECIDED, KEPT, TAKEN_OVER)
# A reservation record this old may have been republished by the reconciler
# (it republishes after reservation_stale_s): even a certain failure then
# leaves a copy that can be consumed, so it is handled as an uncertain one.
REPUBLISH_MARGIN = 0.5


class AdmissionPublisher:
    """The produce step of an admission, and the answer when it fails."""

    def __init__(
        self, core: CoreResources, producer: PurchaseProducer, metrics: GatewayMetrics
    ) -> None:
        self.core = core
        self.producer = producer
        self.metrics = metrics
        self.settings = core.settings
        for outcome in OUTCOMES:
            metrics.failed_produces.labels(outcome)

    async def publish(
        self, message: PurchaseMessage, claim: IdempotencyRecord, reserved_before: bool
    ) -> None:
        """Produce the admission's message; on failure see `answer`."""
        if fails_here(self.settings.failpoint, PRODUCE_DELIVERED_LATE):
            await self._delivered_late(message, claim, reserved_before)
            return
        started = time.perf_counter()
        try:
            if fails_here(self.settings.failpoint, PRODUCE_FAILS):
                raise UnavailableError("failpoint: the produce failed before sending")
            partition, _offset = await self.producer.publish(message)
            if fails_here(self.settings.failpoint, PRODUCE_LOST_ACK):
                raise ProduceUncertainError("failpoint: in the broker, ack lost", partition)
        except UnavailableError as error:
            await self.answer(message, claim, error, reserved_before)
            return
        self.metrics.produce_latency.observe(time.perf_counter() - started)

    async def _delivered_late(
        self, message: PurchaseMessage, claim: IdempotencyRecord, reserved_before: bool
    ) -> None:
        """Failpoint: an uncertain failure whose record reaches the broker only once
        the gateway has handled the error (the producer's retry after our timeout)."""
        partition = self.producer.partition_for(message.item_id.encode())
        error = ProduceUncertainError("failpoint: to be delivered late", partition)
        try:
            await self.answer(message, claim, error, reserved_before)
        finally:
            await self.producer.publish(message)

    async def answer(
        self,
        message: PurchaseMessage,
        claim: IdempotencyRecord,
        error: UnavailableError,
        reserved_before: bool,
    ) -> None:
        """Raise the error (503) when nothing stays reserved and nothing can be charged,
        ApiError in_progress when another request took the admission over; return
        when the purchase will be decided (the caller answers 202)."""
        self.metrics.produce_errors.inc()
        log.warning("produce of %s failed: %s", message.purchase_id, error)
        if reserved_before:
            # An earlier request of this key reserved these units and may have
            # published them: not ours to give back. The record stays, so the
            # reconciler republishes it unless Postgres knows the purchase.
            self._count(KEPT)
            return
        if isinstance(error, ProduceUncertainError):
            await self._fence(message, claim, error.partition, error)
            return
        if not await self._release_claim(message, claim):
            self._count(TAKEN_OVER)
            raise in_progress() from error
        if self._may_be_republished(message):
            await self._fence(message, claim, self._partition(message), error)
            return
        if await self._give_back(message):
            self._count(GIVEN_BACK)
            raise error
        # The record may still be there, and the reconciler would publish it: make
        # the purchase final first, or keep the promise of a 202.
        await self._fence(message, claim, self._partition(message), error)

    async def _fence(
        self,
        message: PurchaseMessage,
        claim: IdempotencyRecord,
        partition: int,
        error: UnavailableError,
    ) -> None:
        try:
            if fails_here(self.settings.failpoint, FENCE_FAILS):
                raise UnavailableError("failpoint: Postgres cannot be written")
            fence = await reject_unadmitted(self.core.pool, message, self.settings.topic, partition)
        except UnavailableError as db_error:
            log.warning(
                "%s: Postgres cannot make it final (%s): its reservation stays, answered 202",
                message.purchase_id,
                db_error,
            )
            await self._mark_published(message, claim)
            self._count(KEPT)
            return
        if fence.fenced or _rejected(fence):
            await self._give_back(message)  # once: a late copy's settle finds no record
        await self._mark_published(message, claim)
        if not fence.fenced:
            self._count(DECIDED)
            return
        self._count(FENCED)
        raise error

    async def _release_claim(self, message: PurchaseMessage, claim: IdempotencyRecord) -> bool:
        """Drop the claim if it is still ours: a request that took this admission
        over (we were slow) publishes the same reservation, so it must stay."""
        try:
            return await self.core.idempotency.swap(message.purchase_id, claim, None)
        except UnavailableError:
            return True  # Redis failing: the give-back fails too, and the fence decides

    async def _give_back(self, message: PurchaseMessage) -> bool:
        """Return the reservation's units; False (counted) when Redis failed."""
        giveback = Settlement(
            message.item_id, message.shard, message.purchase_id, message.quantity, True
        )
        try:
            if fails_here(self.settings.failpoint, GIVEBACK_FAILS):
                raise UnavailableError("failpoint: give-back fails")
            await self.core.stock.settle([giveback])
        except UnavailableError as exc:
            self.metrics.giveback_errors.inc()
            log.warning(
                "%s: units not given back (%s): the reconciler will", message.purchase_id, exc
            )
            return False
        return True

    async def _mark_published(self, message: PurchaseMessage, claim: IdempotencyRecord) -> None:
        """Mark the claim as a published one, putting it back if it was released
        before a give-back failed: a retry answers 202 from it at once, and a read
        of a 202'd purchase finds it pending until it is decided. A record another
        request wrote meanwhile is left as it is."""
        published = claim.published(message.shard)
        try:
            if not await self.core.idempotency.swap(message.purchase_id, claim, published):
                await self.core.idempotency.claim(message.purchase_id, published)
        except UnavailableError as exc:
            # A retry then waits for the claim to age, takes it over, finds the row.
            log.warning("%s: claim not marked (%s)", message.purchase_id, exc)

    def _may_be_republished(self, message: PurchaseMessage) -> bool:
        age_s = time.time() - message.admitted_at_ms / 1000
        return age_s > self.settings.reservation_stale_s * REPUBLISH_MARGIN

    def _partition(self, message: PurchaseMessage) -> int:
        return self.producer.partition_for(message.item_id.encode())

    def _count(self, outcome: str) -> None:
        self.metrics.failed_produces.labels(outcome).inc()


def _rejected(fence: Fence) -> bool:
    return fence.existing is not None and fence.existing.status == REJECTED
