"""Admission: the hot path of design.md, step by step.

sold-out hint (renewed by one shared read when it expired: gateway/soldout.py)
-> rate limits -> item -> claim the idempotency record and
reserve units in the claim's stock shard (with its reservation record), one Lua
call -> other shards when that one had too few -> produce to Kafka -> mark the
record published -> 202.
A key seen before is answered from its record: the claim returns it, and a
refusal before the claim looks it up first, so a replay of an admitted key
answers 202 even when the item is sold out now or the user is rate limited.
Every refusal here comes from state (the item's, the user's, the key's record),
never from the request itself (validation answered that before): so before one
is answered Postgres is asked whether it holds the purchase, for a key Redis
forgot or a record another request wrote after Redis forgot the key.
A crash between any two steps is repaired by a retry (same purchase id) or by
the reconciler (it republishes reservation records Postgres does not know).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from gateway.admission_rules import (
    FilterRebuilding,
    SoldOut,
    check_quantity,
    check_same_request,
    check_window,
    in_progress,
)
from gateway.errors import ApiError
from gateway.hints import ItemHints
from gateway.itemreads import ItemReads
from gateway.metrics import GatewayMetrics
from gateway.producefault import AdmissionPublisher
from gateway.ratelimit import CLIENT, ITEM, USER, RateLimits
from gateway.shardwalk import Reserved, ShardWalk
from gateway.soldout import SoldOutHint
from services.errors import UnavailableError
from services.failpoints import failpoint
from services.producer import PRODUCE_TIMEOUT_S, PurchaseProducer
from services.resources import CoreResources
from services.schema import PurchaseMessage, purchase_id_for
from services.stockfilter.admit import ClaimAndReserve, FirstTry
from services.stockfilter.idempotency import PUBLISHED, REWRITTEN, IdempotencyRecord, new_claim
from services.store.items import Item
from services.store.lookup import PurchaseLookup

log = logging.getLogger(__name__)

# A twin request (same user and key) still mid-admission: how long to wait for it
# (longer than a produce may take, so the twin's outcome is known by then).
TWIN_WAIT_S = PRODUCE_TIMEOUT_S + 1.0
TWIN_POLL_S = 0.02
# Refusals that a request whose twin (same user and key) is mid-admission skips:
# it waits for the twin's outcome instead.
TWIN_SKIPS = frozenset({"sold_out", "rate_limited"})


@dataclass(frozen=True, slots=True)
class Admitted:
    purchase_id: str
    replayed: bool


class Admission:
    def __init__(
        self,
        core: CoreResources,
        producer: PurchaseProducer,
        hints: ItemHints,
        metrics: GatewayMetrics,
        limits: RateLimits,
        lookup: PurchaseLookup,
    ) -> None:
        self.core = core
        self.producer = producer
        self.hints = hints
        self.metrics = metrics
        self.limits = limits
        self.lookup = lookup
        self.items = ItemReads(core, hints)
        self.settings = core.settings
        self.claim_and_reserve = ClaimAndReserve(core.idempotency, core.stock)
        self.sold_out_hint = SoldOutHint(hints, core.stock)
        self.publisher = AdmissionPublisher(core, producer, metrics)
        self.shards = ShardWalk(core, hints)

    async def purchase(
        self, user_id: str, key: str, item_id: str, quantity: int, client: str
    ) -> Admitted:
        """Every step of a POST /v1/purchases after validation, in order."""
        purchase_id = purchase_id_for(self.settings.secret, user_id, key)
        try:
            twin = False
            try:
                if await self.sold_out_hint.sold_out(item_id):
                    raise self.sold_out(item_id)
                await self._check_rate_limits(user_id, client, item_id)
                await self._check_item(item_id, quantity)
            except ApiError as refused:
                # The claim below would have found an earlier record: look it up.
                earlier = await self.core.idempotency.get(purchase_id)
                if earlier is None:
                    raise
                if earlier.state == PUBLISHED or earlier.item_id != item_id:
                    return self._replay(
                        purchase_id, earlier.item_id, earlier.quantity, item_id, quantity
                    )
                if refused.code not in TWIN_SKIPS:
                    raise
                twin = True  # still mid-admission: wait for it below, limits or not
            if twin:
                await self._check_item(item_id, quantity)
            return await self._admit(purchase_id, user_id, key, item_id, quantity)
        except (ApiError, FilterRebuilding) as refused:
            # Off the path of admissions that succeed; batched with the others.
            return await self._stored_or(refused, purchase_id, user_id, item_id, quantity)

    async def _check_item(self, item_id: str, quantity: int) -> None:
        item = await self.item(item_id)
        check_window(item, time.time())
        check_quantity(item, quantity)

    async def _stored_or(
        self,
        refused: ApiError | FilterRebuilding,
        purchase_id: str,
        user_id: str,
        item_id: str,
        quantity: int,
    ) -> Admitted:
        """The purchase when Postgres holds it, else the refusal. Redis forgot this
        key (a restart, eviction, the TTL), or holds the record of another request
        that reused it after that: Postgres' row is the purchase the key names, and
        this request gets 202 when it is the same request (check_same_request).
        Postgres down changes no answer."""
        try:
            stored = await self.lookup.find(purchase_id)
        except UnavailableError:
            raise refused from None
        if stored is None or stored.user_id != user_id:
            raise refused
        self.metrics.recovered.inc()
        return self._replay(purchase_id, stored.item_id, stored.quantity, item_id, quantity)

    def sold_out(self, item_id: str) -> SoldOut:
        self.metrics.sold_out_cached.inc()
        return SoldOut(item_id)

    async def item(self, item_id: str) -> Item:
        return await self.items.item(item_id)

    async def _check_rate_limits(self, user_id: str, client: str, item_id: str) -> None:
        for kind, identity in ((USER, user_id), (CLIENT, client), (ITEM, item_id)):
            try:
                await self.limits.check(kind, identity)
            except ApiError:
                self.metrics.rate_limited.labels(kind).inc()
                raise

    async def _admit(
        self, purchase_id: str, user_id: str, key: str, item_id: str, quantity: int
    ) -> Admitted:
        first = self.core.stock.home_shard(purchase_id)
        claim = new_claim(user_id, item_id, quantity, first)
        admitted_at_ms = int(time.time() * 1000)
        message = PurchaseMessage(
            purchase_id, user_id, key, item_id, quantity, first, admitted_at_ms
        )
        # Marked before the reserve, so the reconciler sees a record a crash leaves.
        await self.core.activity.mark(item_id)
        first_try = await self.claim_and_reserve(purchase_id, claim, message.encode())
        earlier = first_try.earlier
        # With an earlier record nothing was claimed or reserved: the loop decides.
        tried = first_try if earlier is None else None
        deadline = time.monotonic() + TWIN_WAIT_S
        while earlier is not None:
            if earlier.state == PUBLISHED or earlier.item_id != item_id:
                return self._replay(
                    purchase_id, earlier.item_id, earlier.quantity, item_id, quantity
                )
            check_same_request(earlier.item_id, earlier.quantity, item_id, quantity)
            if earlier.age_s > self.settings.reservation_stale_s:
                taken = await self._take_over(purchase_id, earlier)
                if isinstance(taken, Admitted):
                    return taken
                if taken is not None:
                    claim = taken
                    break
            if time.monotonic() > deadline:
                raise in_progress()
            await asyncio.sleep(TWIN_POLL_S)
            earlier = await self.core.idempotency.claim(purchase_id, claim)
        if tried is None:  # claimed after a wait: the reconciler ages records from here
            admitted_at_ms = int(time.time() * 1000)
        # On the first try the claim and its home shard's reserve were one call:
        # a crash here leaves the claim, and the reservation when the shard had units.
        failpoint(self.settings.failpoint, "gateway.after_claim")
        return await self._reserve_and_publish(purchase_id, claim, key, admitted_at_ms, tried)

    async def _take_over(
        self, purchase_id: str, stale: IdempotencyRecord
    ) -> IdempotencyRecord | Admitted | None:
        """Finish the admission of an admitter that looks dead (or is slow, or has a
        skewed clock): the renewed claim, the purchase when Postgres has it already,
        or None when another request took it over first."""
        stored = await self.lookup.find(purchase_id)
        if stored is not None:
            return self._replay(
                purchase_id, stored.item_id, stored.quantity, stale.item_id, stale.quantity
            )
        renewed = stale.renewed()
        if await self.core.idempotency.swap(purchase_id, stale, renewed):
            return renewed
        return None

    async def _reserve_and_publish(
        self,
        purchase_id: str,
        claim: IdempotencyRecord,
        key: str,
        admitted_at_ms: int,
        tried: FirstTry | None,
    ) -> Admitted:
        item_id = claim.item_id

        def message_for(shard: int) -> PurchaseMessage:
            return PurchaseMessage(
                purchase_id, claim.user_id, key, item_id, claim.quantity, shard, admitted_at_ms
            )

        # Marked before the reserve, so the reconciler sees a record a crash leaves.
        await self.core.activity.mark(item_id)
        reserved = await self.shards.reserve(purchase_id, claim, message_for, tried)
        self.hints.mark_empty(item_id, reserved.empty_shards)
        if reserved.shard is None:
            await self._not_reserved(purchase_id, reserved)
        assert reserved.shard is not None
        failpoint(self.settings.failpoint, "gateway.after_reserve")
        if self.core.activity.stale_mark(item_id):
            await self.core.activity.mark(item_id, force=True)  # paused between mark and reserve
        # A failed produce answers 503 only when nothing stays reserved or can be
        # charged later (gateway/producefault.py); else it returns and this is a 202.
        await self._publish(message_for(reserved.shard), reserved.claim, reserved.before)
        failpoint(self.settings.failpoint, "gateway.after_produce")
        await self._mark_published(purchase_id, reserved.claim, reserved.shard)
        self.metrics.admitted.inc()
        return Admitted(purchase_id, replayed=False)

    async def _not_reserved(self, purchase_id: str, reserved: Reserved) -> None:
        """No shard had the units: drop the claim and say why."""
        item_id = reserved.claim.item_id
        await self.core.idempotency.swap(purchase_id, reserved.claim, None)
        if reserved.missing:
            await self.core.activity.mark(item_id, force=True)  # the reconciler rebuilds it
            raise FilterRebuilding(item_id)
        if len(self.hints.empty_shards(item_id)) >= self.core.stock.shards:
            self.hints.mark_sold_out(item_id)  # every shard is empty, not just short
        self.metrics.sold_out_found.inc()
        raise SoldOut(item_id)

    async def _mark_published(self, purchase_id: str, claim: IdempotencyRecord, shard: int) -> None:
        try:
            published = claim.published(shard)
            marked = await self.core.idempotency.mark_published(purchase_id, claim, published)
            if marked == REWRITTEN:  # Redis lost the claim: written again for a later GET
                self.metrics.published_rewritten.inc()
        except UnavailableError as exc:
            # The message is durable in Kafka and will be decided: answer 202. A retry
            # finds the claim, takes it over when stale, and finds the same reservation.
            self.metrics.publish_mark_errors.inc()
            log.warning("admitted %s but could not mark it published: %s", purchase_id, exc)

    async def _publish(
        self, message: PurchaseMessage, claim: IdempotencyRecord, reserved_before: bool
    ) -> None:
        await self.publisher.publish(message, claim, reserved_before)

    def _replay(
        self,
        purchase_id: str,
        earlier_item: str,
        earlier_quantity: int,
        item_id: str,
        quantity: int,
    ) -> Admitted:
        check_same_request(earlier_item, earlier_quantity, item_id, quantity)
        self.metrics.replayed.inc()
        return Admitted(purchase_id, replayed=True)
