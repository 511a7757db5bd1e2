"""The reconciler: repairs the efficiency layer (Redis) from the correctness layer (Postgres).

Safe to run in several processes at once: every step is idempotent or commutes
(settling a record twice gives nothing back twice; a purchase published twice is
applied once by Postgres' unique key; the filter only ever changes by increments,
never by an overwrite that could erase a concurrent reserve or give-back).

The repairs themselves (a filter read beside Postgres, brought back to what
Postgres says is left) are services.filterrepair's.

A pass visits only items with work to do: those gateways marked active
(services/stockfilter/activity.py), a bounded number per pass; and asks Postgres
only for the statuses it needs (records old enough to republish, and every record
of an item whose filter does not agree with `sold` by counts alone).

Drift under load. Each unit is at any instant in one place: a shard's counter,
a reservation record of that shard (reserve.lua and settle.lua move units
between the two atomically), or sold in Postgres. A view reads each shard's
counter with its records in one call, then Postgres in one snapshot. A purchase
settled after the Redis read is still in the view as a record, so its units are
counted once whatever Postgres says of it. What the view gets wrong is a unit
that moved through Postgres and Redis in separate steps between the two reads:
a purchase reserved after its shard was read and applied before Postgres was
(counted in the counter and in `sold`), a cancel or expiry committed before the
Postgres read whose units go back to the counter after the Redis read, an admin
write between its commit and its filter change. The first two are commits of
the partition's owner, and only the owner repairs drift: it reads holding its
ApplyGate exclusively, so none of its batches is between its commit and its
settle meanwhile, and the view is exact. An admin write, or a batch of a new
owner while this process has not yet seen its lease go, can still land between
the reads: a repair waits until two passes in a row read the same drift, which
such a one-off step does not repeat. The same drift twice is what a real drift
looks like however many reserves and settles run meanwhile.

So a drift that appears on an item this process owns is repaired on the second
pass that visits the item after it appeared: within two cycles, a cycle being
ceil(active items / ITEMS_PER_PASS) passes, each `reconcile_interval_s` plus
the pass itself. One more pass for each pass an admin write or a rebalance
disturbed, or that settled a record of the item (its status was final: the
record is at least `stale_s` old). A repair never takes more than a shard holds
(adjust.lua): what reserves took first is in flight, comes back with their
rejections and is taken then. A reconciler without a gate (no consumer in its
process) repairs only an idle item: IDLE_PASSES passes with the filter unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from services.applygate import ApplyGate
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
# Passes in a row an idle item's filter must show the same drift before a repair,
# when the reconciler cannot hold the applies back (no gate).
IDLE_PASSES = 3
# Exact reads in a row that must show the same drift before a repair (gated):
# a step between the two reads (an admin write) disturbs one pass, not two.
CONFIRM_PASSES = 2
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
    # item -> (filter units, or 0 when gated; drift) seen by the last passes.
    idle_drift: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    items_per_pass: int = ITEMS_PER_PASS
    # Which items this process repairs drift of: the owner of the item's partition,
    # so two reconcilers never both apply one repair. None: every item.
    owns: Callable[[str], bool] | None = None
    # Held exclusively while reading and repairing drift: the batches of this
    # process's consumer hold it shared from commit to settle (services.applygate).
    gate: ApplyGate | None = None
    _cursor: int = 0
    # The last item id of a sweep in progress (None: no sweep).
    _sweep_after: str | None = None

    async def run_once(self) -> ReconcileReport:
        """One step through the active items (a full cycle may take several passes),
        and one page of a sweep over every item after Redis lost its data."""
        total = ReconcileReport()
        await self._sweep_step(total)
        self._cursor, item_ids = await self.core.activity.scan(self._cursor, self.items_per_pass)
        item_ids = list(dict.fromkeys(item_ids))
        stale_before_ms = int((time.time() - self.stale_s) * 1000)
        async with self._exclusive():
            views = await read_views(self.core, item_ids, stale_before_ms)
            for view in views:
                total.add(await self._repair_drift(view))
        for view in views:
            total.add(await self.reconcile(view))
        for unknown in set(item_ids) - {view.item.item_id for view in views}:
            await self.core.activity.forget_if_quiet(unknown)  # marked, but no such item
        self._forget_old_republishes()
        return total

    def _exclusive(self) -> AbstractAsyncContextManager[object]:
        return self.gate.exclusive() if self.gate is not None else contextlib.nullcontext()

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

    async def _repair_drift(self, view: FilterView) -> ReconcileReport:
        """Refill lost shards; repair a drift this process owns once confirmed."""
        report = ReconcileReport(looked_up=len(view.statuses))
        item = view.item
        if view.missing:
            units = await repair(self.core.stock, view, item.per_user_limit)
            report.rebuilt.append(item.item_id)
            log.debug("stock filter of %s refilled from Postgres: %+d units", item.item_id, units)
            return report
        # A final record is settled after this read (reconcile): it may be a cancelled
        # purchase's whose units went back already, counted twice here.
        owned = self.owns is None or self.owns(item.item_id)
        if not owned or view.final or not self._drift_confirmed(view):
            if not owned or view.final:
                self.idle_drift.pop(item.item_id, None)
            return report
        units = await repair(self.core.stock, view, item.per_user_limit)
        report.rebuilt.append(item.item_id)
        log.warning(
            "stock filter of %s repaired from Postgres: drift %+d, %+d units",
            item.item_id,
            view.drift,
            units,
        )
        return report

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
        pending = [m for m in view.messages if view.statuses.get(m.purchase_id, "") is None]
        report.republished = await self._republish_stale(pending)
        if (
            not view.messages
            and view.drift == 0
            and await self.core.activity.forget_if_quiet(view.item.item_id)
        ):
            self.idle_drift.pop(view.item.item_id, None)
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

    def _drift_confirmed(self, view: FilterView) -> bool:
        """The same drift read on the last passes in a row (CONFIRM_PASSES exact
        reads when gated; IDLE_PASSES with the filter unchanged when not)."""
        # A view that is not complete had nothing applied among its records and a
        # counted drift of 0 (read_views looked every record up otherwise).
        drift = view.drift if view.complete else 0
        if self.gate is not None:
            seen, passes = (0, drift), CONFIRM_PASSES
        else:
            seen, passes = (view.filter_units, drift), IDLE_PASSES
        history = self.idle_drift.setdefault(view.item.item_id, [])
        history.append(seen)
        del history[:-passes]
        confirmed = len(history) == passes and len(set(history)) == 1
        if confirmed and drift != 0:
            history.clear()
            return True
        return False

    def _forget_old_republishes(self) -> None:
        horizon = time.time() - REPUBLISH_MEMORY_S
        for purchase_id in [p for p, at in self.republished_at.items() if at < horizon]:
            del self.republished_at[purchase_id]
