"""The reconciler: repairs the efficiency layer (Redis) from the correctness layer (Postgres).

Safe to run in several processes at once: every step is idempotent (settling a
record twice gives nothing back twice; a purchase published twice is applied
once by Postgres' unique key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.resources import CoreResources
from services.schema import MessageError, PurchaseMessage
from services.stockfilter.filter import Settlement
from services.store.decide import REJECTED
from services.store.items import Item, list_items
from services.store.purchases import known_statuses

log = logging.getLogger(__name__)

Publish = Callable[[PurchaseMessage], Awaitable[object]]
# Passes in a row an idle item's filter must show the same missing units before a rebuild.
IDLE_PASSES = 3
REPUBLISH_MEMORY_S = 600.0


@dataclass
class ReconcileReport:
    settled: int = 0
    republished: int = 0
    rebuilt: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.settled or self.republished or self.rebuilt)


async def rebuild_item(core: CoreResources, item: Item, in_flight: int | None = None) -> int:
    """Set the filter to stock - sold - units still in flight; returns the units set.

    `in_flight` is counted from Redis and Postgres unless the caller already has it.
    """
    if in_flight is None:
        in_flight = await _units_in_flight(core, item)
    remaining_units = max(item.remaining - in_flight, 0)
    await core.stock.set_remaining(item.item_id, remaining_units, item.per_user_limit)
    return remaining_units


async def _units_in_flight(core: CoreResources, item: Item) -> int:
    """Units of reservations whose purchase Postgres does not know yet."""
    records = await core.stock.reservations(item.item_id)
    pending = {pid: raw for shard in records.values() for pid, raw in shard.items()}
    final = await known_statuses(core.pool, list(pending))
    return sum(_quantity(raw) for pid, raw in pending.items() if pid not in final)


def _quantity(raw: bytes) -> int:
    try:
        return PurchaseMessage.decode(raw).quantity
    except MessageError:
        return 0


@dataclass
class Reconciler:
    """One reconciler loop's memory between passes (each pass is safe on its own)."""

    core: CoreResources
    publish: Publish | None
    stale_s: float
    # Republish a record at most once per stale period, however long the log lags.
    republished_at: dict[str, float] = field(default_factory=dict)
    # item -> (filter units, drift) seen by the last passes while the item was idle.
    idle_drift: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    async def run_once(self) -> ReconcileReport:
        total = ReconcileReport()
        for item in await list_items(self.core.pool):
            report = await self.reconcile_item(item)
            total.settled += report.settled
            total.republished += report.republished
            total.rebuilt += report.rebuilt
        self._forget_old_republishes()
        return total

    async def reconcile_item(self, item: Item) -> ReconcileReport:
        report = ReconcileReport()
        levels = await self.core.stock.shard_levels(item.item_id)
        messages = _decode_all(await self.core.stock.reservations(item.item_id))
        final = await known_statuses(self.core.pool, [m.purchase_id for m in messages])
        settle = [
            Settlement(
                m.item_id, m.shard, m.purchase_id, m.quantity, final[m.purchase_id] == REJECTED
            )
            for m in messages
            if m.purchase_id in final
        ]
        if settle:
            await self.core.stock.settle(settle)
            report.settled = len(settle)
        pending = [m for m in messages if m.purchase_id not in final]
        report.republished = await self._republish_stale(pending)
        in_flight = sum(m.quantity for m in pending)
        if any(level is None for level in levels) or self._drifted(item, levels, in_flight):
            units = await rebuild_item(self.core, item, in_flight)
            report.rebuilt.append(item.item_id)
            log.warning("stock filter of %s rebuilt from Postgres: %d units", item.item_id, units)
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

    def _drifted(self, item: Item, levels: list[int | None], in_flight: int) -> bool:
        """Units lost from the filter (undersell risk), seen on IDLE_PASSES passes in a
        row with the filter unchanged: a sale in progress is never second-guessed."""
        units = sum(level or 0 for level in levels)
        drift = item.remaining - in_flight - units
        history = self.idle_drift.setdefault(item.item_id, [])
        history.append((units, drift))
        del history[:-IDLE_PASSES]
        settled = len(history) == IDLE_PASSES and len(set(history)) == 1
        if settled and drift > 0:
            history.clear()
            return True
        return False

    def _forget_old_republishes(self) -> None:
        horizon = time.time() - REPUBLISH_MEMORY_S
        for purchase_id in [p for p, at in self.republished_at.items() if at < horizon]:
            del self.republished_at[purchase_id]


def _decode_all(records: dict[int, dict[str, bytes]]) -> list[PurchaseMessage]:
    messages = []
    for shard_records in records.values():
        for raw in shard_records.values():
            try:
                messages.append(PurchaseMessage.decode(raw))
            except MessageError:
                log.error("dropping an undecodable reservation record: %r", raw[:200])
    return messages
