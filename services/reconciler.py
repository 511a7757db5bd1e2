"""The reconciler: repairs the efficiency layer (Redis) from the correctness layer (Postgres).

Safe to run in several processes at once: every step is idempotent or commutes
(settling a record twice gives nothing back twice; a purchase published twice is
applied once by Postgres' unique key; the filter only ever changes by increments,
never by an overwrite that could erase a concurrent reserve or give-back).

The repairs themselves (a filter read beside Postgres, brought back to what
Postgres says is left) are services.filterrepair's.

A pass visits only items with work to do: those gateways marked active
(services/stockfilter/activity.py), a bounded number per pass; and asks Postgres
only for the statuses it needs: those of records old enough to be republished
(or settled: the consumers settle the others), and of every record of an item
whose counts (units and records per shard, `may_drift`) disagree with `sold`.

Drift repair under load, and why it is exact, is services.driftrepair's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.applygate import ApplyGate
from services.driftrepair import DriftRepairs
from services.filterrepair import FilterView, apply_item_write, read_views, repair, spread_plan
from services.resources import CoreResources
from services.schema import PurchaseMessage
from services.stockfilter.filter import Settlement
from services.store.decide import REJECTED
from services.store.items import item_ids_after

log = logging.getLogger(__name__)

# The repairs live in services.filterrepair; the gateway and tests name them here too.
__all__ = [
    "FilterView",
    "ReconcileReport",
    "Reconciler",
    "apply_item_write",
    "read_views",
    "repair",
    "spread_plan",
]

Publish = Callable[[PurchaseMessage], Awaitable[object]]
REPUBLISH_MEMORY_S = 600.0
# Items looked at per pass: bounds a pass however many items are selling.
ITEMS_PER_PASS = 500
# Item ids named in the info line of a pass; all of them go to debug.
REBUILT_IDS_SHOWN = 3


@dataclass
class ReconcileReport:
    settled: int = 0
    republished: int = 0
    rebuilt: list[str] = field(default_factory=list)
    visited: int = 0
    forgotten: int = 0
    # Reservation records whose status was asked of Postgres.
    looked_up: int = 0

    def __bool__(self) -> bool:
        return bool(self.settled or self.republished or self.rebuilt)

    def summary(self) -> str:
        """One short line whatever the number of items (their ids: `rebuilt_ids`)."""
        shown = ", ".join(self.rebuilt[:REBUILT_IDS_SHOWN])
        more = len(self.rebuilt) - REBUILT_IDS_SHOWN
        rebuilt = f" ({shown}{f' and {more} more' if more > 0 else ''})" if self.rebuilt else ""
        return (
            f"settled {self.settled}, republished {self.republished}, "
            f"rebuilt {len(self.rebuilt)} filter(s){rebuilt}, "
            f"visited {self.visited}, forgotten {self.forgotten}"
        )

    def rebuilt_ids(self) -> str:
        return " ".join(self.rebuilt)

    def add(self, other: ReconcileReport) -> None:
        self.settled += other.settled
        self.republished += other.republished
        self.rebuilt += other.rebuilt
        self.visited += other.visited
        self.forgotten += other.forgotten
        self.looked_up += other.looked_up


@dataclass
class Reconciler:
    """One reconciler loop's memory between passes (each pass is safe on its own)."""

    core: CoreResources
    publish: Publish | None
    stale_s: float
    # Republish a record at most once per stale period, however long the log lags.
    republished_at: dict[str, float] = field(default_factory=dict)
    items_per_pass: int = ITEMS_PER_PASS
    # Which items this process repairs drift of: the owner of the item's partition,
    # so two reconcilers never both apply one repair. None: every item.
    owns: Callable[[str], bool] | None = None
    # Held exclusively while reading and repairing drift (services.driftrepair).
    gate: ApplyGate | None = None
    _cursor: int = 0
    # The last item id of a sweep in progress (None: no sweep).
    _sweep_after: str | None = None
    drift: DriftRepairs = field(init=False)

    def __post_init__(self) -> None:
        self.drift = DriftRepairs(self.owns, self.gate)

    async def run_once(self) -> ReconcileReport:
        """One step through the active items (a full cycle may take several passes),
        and one page of a sweep over every item after Redis lost its data."""
        total = ReconcileReport()
        await self._sweep_step(total)
        self._cursor, item_ids = await self.core.activity.scan(self._cursor, self.items_per_pass)
        item_ids = list(dict.fromkeys(item_ids))
        stale_before_ms = int((time.time() - self.stale_s) * 1000)
        views = await read_views(self.core, item_ids, stale_before_ms)
        total.looked_up += sum(len(view.statuses) for view in views)
        for view in views:
            if view.missing:
                total.add(await self._refill(view))
        drift = await self.drift.run(self.core, self.drift.candidates(views))
        total.rebuilt += drift.repaired
        total.looked_up += drift.looked_up
        for view in views:
            total.add(await self.reconcile(view))
        for unknown in set(item_ids) - {view.item.item_id for view in views}:
            await self.core.activity.forget_if_quiet(unknown)  # marked, but no such item
        self._forget_old_republishes()
        return total

    async def _sweep_step(self, total: ReconcileReport) -> None:
        """Visit every item once after Redis lost its data: the set of active items
        went with it, so items nobody buys would keep a missing filter (a sale that
        starts later would open on 503s) and orphaned records nobody republishes."""
        if self._sweep_after is None:
            if not await self.core.activity.needs_sweep():
                return
            await self.core.activity.sweep_started()
            self._sweep_after = ""
        elif not await self.core.activity.sweep_intact():
            await self.core.activity.sweep_started()  # lost again meanwhile: start over
            self._sweep_after = ""
        item_ids = await item_ids_after(self.core.pool, self._sweep_after, self.items_per_pass)
        if not item_ids:
            await self.core.activity.sweep_done()
            self._sweep_after = None
            return
        for view in await read_views(self.core, item_ids):
            if view.missing:
                await repair(self.core.stock, view, view.item.per_user_limit)
                total.rebuilt.append(view.item.item_id)
            if view.messages:
                await self.core.activity.mark(view.item.item_id, force=True)
        self._sweep_after = item_ids[-1]

    async def _refill(self, view: FilterView) -> ReconcileReport:
        units = await repair(self.core.stock, view, view.item.per_user_limit)
        log.debug("stock filter of %s refilled from Postgres: %+d units", view.item.item_id, units)
        return ReconcileReport(rebuilt=[view.item.item_id])

    async def reconcile(self, view: FilterView) -> ReconcileReport:
        """Settle the records of final purchases, republish stale ones, forget an
        item with nothing left to do."""
        report = ReconcileReport(visited=1)
        final = view.final
        settle = [
            Settlement(
                m.item_id, m.shard, m.purchase_id, m.quantity, final[m.purchase_id] == REJECTED
            )
            for m in view.messages
            if m.purchase_id in final
        ]
        if settle:
            await self.core.stock.settle(settle)
            report.settled = len(settle)
        # Only records looked up: the others are younger than `stale_s`.
        report.republished = await self._republish_stale(view.unknown)
        if (
            not view.messages
            and view.drift == 0
            and await self.core.activity.forget_if_quiet(view.item.item_id)
        ):
            self.drift.forget(view.item.item_id)
            report.forgotten = 1
        return report

    async def _republish_stale(self, pending: list[PurchaseMessage]) -> int:
        """Reservations Postgres does not know after `stale_s`: their message was lost."""
        if self.publish is None:
            return 0
        now = time.time()
        count = 0
        for message in pending:
            admitted = message.admitted_at_ms / 1000
            last = self.republished_at.get(message.purchase_id, admitted)
            if now - last > self.stale_s:
                await self.publish(message)
                self.republished_at[message.purchase_id] = now
                count += 1
        return count

    def _forget_old_republishes(self) -> None:
        horizon = time.time() - REPUBLISH_MEMORY_S
        for purchase_id in [p for p, at in self.republished_at.items() if at < horizon]:
            del self.republished_at[purchase_id]
