"""Drift repair under load: a stock filter that holds units Postgres says are not
left (phantoms: extra admissions end `rejected: sold_out`), or lacks units that
are (undersold), is brought back while the crowd keeps buying.

Why the drift read is exact. Each unit is at any instant in one place: a
shard's counter, a reservation record of that shard (reserve.lua and settle.lua
move units between the two atomically, and so does the gateway's give-back
after a failed produce), or sold in Postgres. A view reads each shard's counter
with its records in one call, then Postgres in one snapshot. A purchase settled
after the Redis read is still a record in the view, so its units count once
whatever Postgres says of it, and a rejected record still held counts as held.
What a view can get wrong is a unit that moved through Postgres and Redis in two
steps between its two reads: a purchase reserved after its shard was read and
applied before Postgres was (in the counter and in `sold`), a cancel or expiry
committed before the Postgres read whose units reach the counter after the
Redis read, an admin write between its commit and its filter change. The first
two are commits of the partition's owner, and only the owner repairs drift
(`owns`: two reconcilers never both apply one repair): it reads holding its
consumer's ApplyGate exclusively, so none of its batches is between commit and
settle meanwhile, and the read is exact. An admin write, or a batch of a new
owner before this process saw its lease go, can still land between the reads;
so a repair waits for two passes in a row that read the same drift, which such
a one-off step does not repeat, while a real drift reads the same however many
reserves and settles run meanwhile. A repair is increments (adjust.lua), never
below zero on a shard: what reserves took first is in flight, comes back with
their rejections and is taken by a later repair.

What the gate costs the batches. Under it, `may_drift` reads each shard's units
and record count (no record) and the items' `sold`: an item whose purchases take
one unit each and whose counts agree has no drift, unless a record of an applied
purchase lingers (its settle failed: the reconciler settles it once stale) or a
record holds several units (per_user_limit lowered since); it is then looked at
again later, never repaired wrongly. Only the others get full views, records and
statuses, under the gate.

The bound. A drift that appears on an item this process owns is repaired on the
second pass that visits the item after it appeared: within two cycles, a cycle
being ceil(active items / ITEMS_PER_PASS) passes of `reconcile_interval_s` plus
the pass itself; one pass more for each pass that an admin write or a rebalance
disturbed, and up to `stale_s` more while a final record of the item waits to
be settled. A reconciler without a gate (no consumer in its process) repairs only
an idle item: IDLE_PASSES passes with the filter unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from services.applygate import ApplyGate
from services.filterrepair import FilterView, may_drift, read_views, repair
from services.resources import CoreResources

log = logging.getLogger(__name__)

# Passes in a row an idle item's filter must show the same drift before a repair,
# when the reconciler cannot hold the applies back (no gate).
IDLE_PASSES = 3
# Exact reads in a row that must show the same drift before a repair (gated):
# a step between the two reads (an admin write) disturbs one pass, not two.
CONFIRM_PASSES = 2


@dataclass
class DriftOutcome:
    repaired: list[str] = field(default_factory=list)
    # Reservation records whose status was asked of Postgres.
    looked_up: int = 0


@dataclass
class DriftRepairs:
    """One reconciler's drift memory: the drift of each item on the last passes."""

    # Which items this process repairs drift of: the owner of the item's partition,
    # so two reconcilers never both apply one repair. None: every item.
    owns: Callable[[str], bool] | None = None
    # Held exclusively while reading and repairing drift: the batches of this
    # process's consumer hold it shared from commit to settle (services.applygate).
    gate: ApplyGate | None = None
    # item -> (filter units, or 0 when gated; drift) seen by the last passes.
    history: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def forget(self, item_id: str) -> None:
        """The item's run of agreeing passes starts again."""
        self.history.pop(item_id, None)

    def candidates(self, views: list[FilterView]) -> list[str]:
        """Items whose drift this pass may repair: owned, whole, and with no final
        record, which the reconciler settles after this: it may be a cancelled
        purchase's whose units went back already, and count twice."""
        candidates = []
        for view in views:
            item_id = view.item.item_id
            if view.missing or view.final or (self.owns is not None and not self.owns(item_id)):
                self.forget(item_id)
            else:
                candidates.append(item_id)
        return candidates

    async def run(self, core: CoreResources, item_ids: list[str]) -> DriftOutcome:
        """Read the drift of `item_ids` holding the gate (a cheap count first, a full
        view only where the count disagrees) and repair what two passes confirm."""
        outcome = DriftOutcome()
        if not item_ids:
            return outcome
        async with self._exclusive():
            suspects = await may_drift(core, item_ids)
            for item_id in set(item_ids) - set(suspects):
                self.forget(item_id)  # no drift seen
            for view in await read_views(core, suspects) if suspects else []:
                outcome.looked_up += len(view.statuses)
                if view.final:  # a record whose settle failed: settled once stale
                    self.forget(view.item.item_id)
                elif self._confirmed(view):
                    await self._repair(core, view)
                    outcome.repaired.append(view.item.item_id)
        return outcome

    def _exclusive(self) -> AbstractAsyncContextManager[object]:
        return self.gate.exclusive() if self.gate is not None else contextlib.nullcontext()

    async def _repair(self, core: CoreResources, view: FilterView) -> None:
        units = await repair(core.stock, view, view.item.per_user_limit)
        log.warning(
            "stock filter of %s repaired from Postgres: drift %+d, %+d units",
            view.item.item_id,
            view.drift,
            units,
        )

    def _confirmed(self, view: FilterView) -> bool:
        """The same drift read on the last passes in a row (CONFIRM_PASSES exact
        reads when gated; IDLE_PASSES with the filter unchanged when not)."""
        if self.gate is not None:
            seen, passes = (0, view.drift), CONFIRM_PASSES
        else:
            seen, passes = (view.filter_units, view.drift), IDLE_PASSES
        history = self.history.setdefault(view.item.item_id, [])
        history.append(seen)
        del history[:-passes]
        confirmed = len(history) == passes and len(set(history)) == 1
        if confirmed and view.drift != 0:
            history.clear()
            return True
        return False
