"""Finding a purchase by id, and knowing when "no such purchase" is true.

A purchase answered 202 is in Postgres once applied, and until then its
idempotency record is in Redis. If Redis lost data (services/stockfilter/
incarnation.py) an accepted purchase may be in neither place for a while, so
"in neither" proves nothing until the fence of Redis' new incarnation has passed
every partition of the purchases log: every purchase acknowledged before the
loss was noticed lies before the fence, so once each partition's owner applied
it, a purchase still unknown was never accepted. Until then the answer is an
honest "cannot tell yet" (503), never 404 (docs/faults.md, "Redis lost data").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.errors import ApiError
from gateway.metrics import GatewayMetrics
from services.errors import UnavailableError
from services.producer import PurchaseProducer
from services.resources import CoreResources
from services.schema import PurchaseMessage
from services.stockfilter.idempotency import IdempotencyRecord
from services.stockfilter.incarnation import Incarnations, Sighting
from services.store.fences import fence_verdict
from services.store.items import rfc3339
from services.store.purchases import PurchaseRow, get_purchase

log = logging.getLogger(__name__)

PENDING = "pending"
# A fence not passed yet is produced again this often (by each gateway that is
# asked): its first producer may have died, or the broker lost its log.
FENCE_RESEND_S = 5.0
# Incarnations whose fence this gateway produced, remembered for the resend.
FENCES_REMEMBERED = 1_000
UNCERTAIN_RETRY_AFTER_S = 1
# Each gateway looks Redis' incarnation up this often on its own, so a loss is
# fenced within a second even when no GET asks, and the GETs that do come find
# the fence passed already. (On a cluster this watches one hash slot.)
INCARNATION_WATCH_S = 1.0
# The id the watch looks up: no purchase has it (an HMAC output of all zeros).
WATCH_ID = "p_" + "0" * 32


@dataclass(frozen=True, slots=True)
class Known:
    """A purchase Postgres holds (`row`), or a pending one Redis holds the record of."""

    purchase_id: str
    row: PurchaseRow | None = None
    record: IdempotencyRecord | None = None

    @property
    def user_id(self) -> str:
        if self.row is not None:
            return self.row.user_id
        assert self.record is not None
        return self.record.user_id

    @property
    def pending(self) -> bool:
        return self.row is None

    def as_json(self) -> dict[str, object]:
        if self.row is not None:
            return purchase_json(self.row)
        assert self.record is not None
        return {
            "purchase_id": self.purchase_id,
            "item_id": self.record.item_id,
            "quantity": self.record.quantity,
            "status": PENDING,
            "reason": None,
            "pay_by": None,
        }


@dataclass(frozen=True, slots=True)
class Unknown:
    """Neither Postgres nor Redis holds it; `certain`: so it was never accepted."""

    certain: bool


def purchase_json(row: PurchaseRow) -> dict[str, object]:
    return {
        "purchase_id": row.purchase_id,
        "item_id": row.item_id,
        "quantity": row.quantity,
        "status": row.status,
        "reason": row.reason,
        "pay_by": rfc3339(row.pay_by),
    }


def not_found() -> ApiError:
    return ApiError(404, "purchase_not_found", "no such purchase")


class PurchaseFinder:
    def __init__(
        self, core: CoreResources, producer: PurchaseProducer, metrics: GatewayMetrics
    ) -> None:
        self.core = core
        self.producer = producer
        self.metrics = metrics
        self.topic = core.settings.topic
        self.incarnations = Incarnations(
            core.redis, core.idempotency, cluster=core.settings.redis_cluster
        )
        # incarnation token -> when this gateway last produced its fence (monotonic).
        self._fenced_at: dict[str, float] = {}

    async def find(self, purchase_id: str) -> Known | Unknown:
        """Postgres, then Redis (with its incarnation), then the fence: in this order,
        so a purchase applied or recorded between two reads is never missed."""
        row = await get_purchase(self.core.pool, purchase_id)
        if row is not None:
            return Known(purchase_id, row=row)
        sighting = await self.incarnations.lookup(purchase_id)
        if sighting.record is not None:
            return Known(purchase_id, record=sighting.record)
        return await self._unknown(purchase_id, sighting)

    async def watch_once(self) -> None:
        sighting = await self.incarnations.lookup(WATCH_ID)
        if sighting.new:
            await self._fence_everywhere(sighting.incarnation)

    def owned(self, found: Known | Unknown, caller: str | None, route: str) -> Known:
        """The purchase if `caller` may see it (None: an admin), else the answer to give:
        404 when it is someone else's or certainly unknown, 503 while uncertain."""
        if isinstance(found, Known):
            if caller is not None and found.user_id != caller:
                raise not_found()
            return found
        if found.certain:
            raise not_found()
        self.metrics.uncertain.labels(route).inc()
        raise ApiError(
            503,
            "unavailable",
            "Redis lost data and the consumers have not caught up yet, so this gateway"
            " cannot tell whether the purchase was accepted; retry",
            {"Retry-After": str(UNCERTAIN_RETRY_AFTER_S)},
        )

    async def _unknown(self, purchase_id: str, sighting: Sighting) -> Known | Unknown:
        verdict = await fence_verdict(self.core.pool, sighting.incarnation, self.topic, purchase_id)
        if verdict.known:  # applied since the first read
            row = await get_purchase(self.core.pool, purchase_id)
            if row is not None:
                return Known(purchase_id, row=row)
        try:
            partitions = await self.producer.partitions()
        except UnavailableError as exc:
            log.warning("cannot tell whether %s was accepted: %s", purchase_id, exc)
            return Unknown(certain=False)
        missing = partitions - verdict.passed
        if partitions and not missing:
            return Unknown(certain=True)
        await self._fence(sighting.incarnation, missing)
        return Unknown(certain=False)

    async def _fence_everywhere(self, token: str) -> None:
        try:
            partitions = await self.producer.partitions()
        except UnavailableError as exc:
            log.warning("no fence for Redis incarnation %s yet: %s", token, exc)
            return
        await self._fence(token, partitions)

    async def _fence(self, token: str, partitions: frozenset[int]) -> None:
        """Produce the fence of incarnation `token` to each partition, unless this
        gateway did within FENCE_RESEND_S. Any copy of a fence will do: each is
        produced after the loss was noticed, so after every purchase acknowledged
        before it."""
        now = time.monotonic()
        sent_at = self._fenced_at.get(token)
        if not partitions or (sent_at is not None and now - sent_at < FENCE_RESEND_S):
            return
        if len(self._fenced_at) >= FENCES_REMEMBERED:
            self._fenced_at.clear()
        self._fenced_at[token] = now
        fence = PurchaseMessage.fence(token, int(time.time() * 1000))
        sends = [self.producer.publish_to(fence, partition) for partition in sorted(partitions)]
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, UnavailableError):
                log.warning("fence %s not produced (sent again later): %s", token, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
        self.metrics.fences_produced.inc(sum(isinstance(o, int) for o in outcomes))
        log.info("Redis incarnation %s: fence produced to partitions %s", token, sorted(partitions))


@contextlib.asynccontextmanager
async def incarnation_watch(finder: PurchaseFinder) -> AsyncIterator[None]:
    """Run `finder.watch_once` every INCARNATION_WATCH_S while the block runs."""

    async def watch() -> None:
        while True:
            try:
                await finder.watch_once()
            except UnavailableError as exc:
                log.debug("incarnation watch: %s", exc)
            await asyncio.sleep(INCARNATION_WATCH_S)

    task = asyncio.create_task(watch(), name="incarnation-watch")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
