"""An item's stock filter read beside Postgres, and brought back to what Postgres
says is left: the repairs the reconciler (services.reconciler) makes after a
drift or a lost shard, and the change an admin write makes to the filter.

Every change is an increment, never an overwrite that could erase a concurrent
reserve or give-back; a lost shard is filled only where it is still missing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.resources import CoreResources
from services.schema import MessageError, PurchaseMessage
from services.stockfilter.filter import ShardSnapshot, StockFilter
from services.store.db import database_errors
from services.store.decide import CONFIRMED, PAID, REJECTED, returns_units
from services.store.items import Item, ItemWrite, get_items
from services.store.purchases import KnownStatus, known_statuses

log = logging.getLogger(__name__)

# A record's state in a FilterView when its purchase was rejected sold_out: final,
# and its units do not go back (they are the filter's excess: returns_units).
EXCESS = "rejected_excess"


@dataclass(frozen=True, slots=True)
class FilterView:
    """An item's filter read from Redis first and Postgres second.

    Every purchase settled after the Redis snapshot is still in it, and Postgres
    is read in one snapshot, so `sold` and the statuses agree with each other.
    `drift` is exact when every record's status was looked up (`read_views`
    without `stale_before_ms`).
    """

    item: Item
    shards: list[ShardSnapshot]
    messages: list[PurchaseMessage]
    # Postgres' status of each record looked up (None: Postgres does not know it yet).
    statuses: dict[str, str | None]

    @property
    def final(self) -> dict[str, str]:
        return {pid: status for pid, status in self.statuses.items() if status is not None}

    @property
    def unknown(self) -> list[PurchaseMessage]:
        """Records looked up whose purchase Postgres does not know yet."""
        return [m for m in self.messages if self.statuses.get(m.purchase_id, "") is None]

    @property
    def missing(self) -> list[int]:
        return [i for i, shard in enumerate(self.shards) if shard.units is None]

    @property
    def filter_units(self) -> int:
        # A shard below zero (a debt left by an older version) sells nothing.
        return sum(max(shard.units or 0, 0) for shard in self.shards)

    @property
    def held_units(self) -> int:
        """Units in reservation records not counted in `sold`: in flight, or rejected
        (the settle that drops a rejected record gives its units back itself; not
        one rejected sold_out, whose units are the filter's excess). A paid
        purchase's units are in `sold` as a confirmed one's. A record not looked up
        counts as in flight."""
        return sum(
            m.quantity
            for m in self.messages
            if self.statuses.get(m.purchase_id) not in (CONFIRMED, PAID, EXCESS)
        )

    @property
    def drift(self) -> int:
        """Units the filter lacks (positive) or holds too many (negative)."""
        return self.item.remaining - self.held_units - self.filter_units


async def read_views(
    core: CoreResources, item_ids: list[str], stale_before_ms: int | None = None
) -> list[FilterView]:
    """Every item's view; with `stale_before_ms`, statuses only of the records
    admitted before it, and of every record of an item whose filter lost a shard
    (the rebuild needs them): the others are in flight, and the consumers settle
    them, so a pass costs what has work to do, not what is in flight."""
    shard_lists = await asyncio.gather(*(core.stock.snapshot(i) for i in item_ids))
    snapshots = dict(zip(item_ids, shard_lists, strict=True))
    messages = {item_id: decode_records(shards) for item_id, shards in snapshots.items()}
    async with (
        database_errors(),
        core.pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        items = await get_items(conn, item_ids)
        unlooked = [
            FilterView(items[i], snapshots[i], messages[i], {}) for i in item_ids if i in items
        ]
        wanted = [_lookups(view, stale_before_ms) for view in unlooked]
        final = await known_statuses(conn, [pid for ids in wanted for pid in ids])
    return [
        FilterView(v.item, v.shards, v.messages, view_statuses(v.item.item_id, ids, final))
        for v, ids in zip(unlooked, wanted, strict=True)
    ]


def view_statuses(
    item_id: str, purchase_ids: list[str], known: dict[str, KnownStatus]
) -> dict[str, str | None]:
    """The final states of an item's looked-up records, as that item sees them. A
    record of a purchase Postgres holds for another item (one key sent for two
    items after Redis forgot it) sold nothing here: like a rejected one, its units
    go back."""
    final: dict[str, str | None] = {}
    for purchase_id in purchase_ids:
        state = known.get(purchase_id)
        if state is None:
            final[purchase_id] = None
        elif state.item_id != item_id:
            final[purchase_id] = REJECTED
        elif state.status == REJECTED and not returns_units(state.status, state.reason):
            final[purchase_id] = EXCESS
        else:
            final[purchase_id] = state.status
    return final


def _lookups(view: FilterView, stale_before_ms: int | None) -> list[str]:
    """The records of `view` whose status the reader needs."""
    if stale_before_ms is None or view.missing:
        return [m.purchase_id for m in view.messages]
    return [m.purchase_id for m in view.messages if m.admitted_at_ms < stale_before_ms]


async def may_drift(core: CoreResources, item_ids: list[str]) -> list[str]:
    """The items whose filter may drift, from counts alone: no record is read.

    For an item whose purchases take one unit each (per_user_limit 1), the units
    its records hold are their number, and `remaining - records - filter` is the
    drift unless a record's purchase is applied already (its units then in `sold`
    too). Read while no batch is between its commit and its settle (the gate),
    such a record is one whose settle failed, and it is settled once stale. An
    item said not to drift here may still drift (such a record, or a record of
    several units); it is only looked at later, never repaired wrongly: a repair
    needs a full view. Items with larger purchases always get one."""
    counts = await asyncio.gather(*(core.stock.counts(i) for i in item_ids))
    async with database_errors(), core.pool.acquire() as conn:
        items = await get_items(conn, item_ids)
    suspects = []
    for item_id, shards in zip(item_ids, counts, strict=True):
        item = items.get(item_id)
        if item is None or any(shard.units is None for shard in shards):
            continue  # gone, or a lost shard: the rebuild's
        units = sum(max(shard.units or 0, 0) for shard in shards)
        records = sum(shard.records for shard in shards)
        if item.per_user_limit > 1 or item.remaining - records - units != 0:
            suspects.append(item_id)
    return suspects


async def repair(stock: StockFilter, view: FilterView, per_request: int) -> int:
    """Bring the filter to `remaining - held` (a complete view) by increments.
    Returns the units added (taken when negative): less than the drift when
    reserves took what was to be taken.

    Lost shards are filled (`SET NX`: once, however many reconcilers fill them)
    with what the others lack, and nothing else changes: a surplus on the shards
    left is the owner's confirmed drift repair's to take, so two reconcilers
    filling at once never both take it."""
    to_spread = view.item.remaining - view.held_units - view.filter_units
    missing = view.missing
    if missing:
        share = max(to_spread, 0)
        added = 0
        for index, shard in enumerate(missing):
            units = share // len(missing) + (1 if index < share % len(missing) else 0)
            if await stock.fill(view.item.item_id, shard, units):
                added += units
        return added
    added = 0
    for shard, units in spread_plan(_levels(view.shards), to_spread, per_request).items():
        added += await stock.add_units(view.item.item_id, shard, units) or 0
    return added


def _levels(shards: list[ShardSnapshot]) -> dict[int, int]:
    return {i: max(s.units, 0) for i, s in enumerate(shards) if s.units is not None}


def spread_plan(levels: dict[int, int], units: int, per_request: int = 1) -> dict[int, int]:
    """How to add `units` (or take, when negative) over shards at `levels`.

    Units go to the emptiest shards, in lots a request can use; units are taken
    from the fullest, never more than a shard holds: what the shards lack now is
    in flight, comes back as those purchases are rejected, and a later repair
    takes it then.
    """
    plan: dict[int, int] = {}
    if not levels or units == 0:
        return plan
    if units > 0:
        order = sorted(levels, key=lambda i: levels[i])
        used = max(1, min(len(order), units // max(per_request, 1)))
        for index, shard in enumerate(order[:used]):
            plan[shard] = units // used + (1 if index < units % used else 0)
        return plan
    owed = -units
    order = sorted(levels, key=lambda i: -levels[i])
    for shard in order:
        take = min(owed, max(levels[shard], 0))
        if take:
            plan[shard] = -take
            owed -= take
    return plan


async def apply_item_write(core: CoreResources, written: ItemWrite) -> None:
    """Load the filter of a new item; change an existing one by exactly new - old
    stock, an increment that cannot erase reserves or settlements in flight."""
    item = written.item
    if written.old_stock is None:
        # NX: a reconciler may have filled the new item's shards already, and a
        # buyer taken a unit since.
        await core.stock.set_remaining(
            item.item_id, item.remaining, item.per_user_limit, only_missing=True
        )
        return
    shards = await core.stock.snapshot(item.item_id)
    if any(shard.units is None for shard in shards):
        (view,) = await read_views(core, [item.item_id])
        await repair(core.stock, view, item.per_user_limit)
        return
    delta = item.stock - written.old_stock
    if delta > 0:
        delta = await _raise_units(core, item.item_id, delta)
    for shard, units in spread_plan(_levels(shards), delta, item.per_user_limit).items():
        await core.stock.adjust(item.item_id, shard, units)


async def _raise_units(core: CoreResources, item_id: str, delta: int) -> int:
    """A raise adds at most what the filter lacks after it. A cut deeper than the
    shards held left a shortfall, owed by in-flight purchases that a raise then
    lets be confirmed: added in full, the raise would put that shortfall on sale
    as phantom units, each sold to a buyer later rejected sold_out (docs/faults.md,
    fourth round). The view may read a give-back or a cancel's return between its
    Redis and Postgres reads and ask for less: a short filter, which the drift
    repair refills, never a phantom beyond what the blind delta had."""
    (view,) = await read_views(core, [item_id])
    return min(delta, max(view.drift, 0))


def decode_records(shards: list[ShardSnapshot]) -> list[PurchaseMessage]:
    messages = []
    for shard in shards:
        for raw in shard.records.values():
            try:
                messages.append(PurchaseMessage.decode(raw))
            except MessageError:
                log.error("dropping an undecodable reservation record: %r", raw[:200])
    return messages
