"""After a batch committed: count what it decided, settle its reservations in Redis,
put the units of cancelled or expired purchases back on sale.

Nothing here can undo the batch: Postgres holds the decisions. A Redis failure
leaves the filter to the reconciler, which settles from Postgres' final states.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from consumers.metrics import ConsumerMetrics
from services.errors import UnavailableError
from services.resources import CoreResources
from services.stockfilter.filter import Settlement
from services.stockfilter.returns import announce_returned
from services.store.batch import BatchResult
from services.store.decide import CANCELLED, EXPIRED, PAID, REJECTED, Target, returns_units

log = logging.getLogger(__name__)


@dataclass
class ConsumerStats:
    batches: int = 0
    applied: int = 0
    confirmed: int = 0
    rejected: int = 0
    cancelled: int = 0
    paid: int = 0
    expired: int = 0
    fenced: int = 0
    reconciler_passes: int = 0
    reconciler_failures: int = 0


class BatchOutcomes:
    """What committed batches decided, counted in the stats and the metrics."""

    def __init__(self, stats: ConsumerStats, metrics: ConsumerMetrics) -> None:
        self.stats = stats
        self.metrics = metrics

    def applied(self, result: BatchResult) -> None:
        new = result.decisions.new
        rejected = sum(1 for d in new if d.status == REJECTED)
        self.stats.batches += 1
        self.stats.applied += len(new)
        self.stats.confirmed += len(new) - rejected
        self.stats.rejected += rejected
        self.metrics.purchases.labels("confirmed").inc(len(new) - rejected)
        self.metrics.purchases.labels("rejected").inc(rejected)
        for status in (CANCELLED, PAID, EXPIRED):
            self.moved_on(status, len(result.decisions.applied(status)))

    def moved_on(self, status: str, purchases: int) -> None:
        """Purchases moved on from confirmed (cancelled, paid, expired)."""
        if not purchases:
            return
        setattr(self.stats, status, getattr(self.stats, status) + purchases)
        self.metrics.purchases.labels(status).inc(purchases)


async def settle_reservations(core: CoreResources, result: BatchResult) -> None:
    """Drop the batch's reservation records; a duplicate copy gives its units back:
    its reservation (if it still has one) is a second one, made by a retry after
    Redis forgot the first. A rejection gives them back unless it was sold_out
    (services.store.decide.returns_units)."""
    settlements = [
        Settlement(
            d.record.message.item_id,
            d.record.message.shard,
            d.record.message.purchase_id,
            d.record.message.quantity,
            give_back=d.duplicate or returns_units(d.status, d.reason),
        )
        for d in result.decisions.decisions
    ]
    try:
        await core.stock.settle(settlements)
    except UnavailableError as exc:
        # The reconciler settles these later from Postgres' final states.
        log.warning("settling %d reservations failed: %s", len(settlements), exc)


async def return_units(core: CoreResources, released: list[Target]) -> None:
    """Put cancelled or expired purchases' units back on sale. They have no
    reservation record left, so they go to the purchase's home shard; a missing
    shard, or Redis failing here, is made good by the reconciler's drift repair."""
    if not released:
        return
    stock = core.stock
    try:
        for target in released:
            shard = stock.home_shard(target.purchase_id)
            if not await stock.adjust(target.item_id, shard, target.quantity):
                log.warning(
                    "item %s: shard %d is missing; the repair returns %d unit(s)",
                    target.item_id,
                    shard,
                    target.quantity,
                )
        await announce_returned(core.redis, sorted({t.item_id for t in released}))
    except UnavailableError as exc:
        log.warning("returning %d purchase(s) units failed: %s", len(released), exc)
