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

Publish = Callable[[PurchaseMessage], Awaitable[None]]


@dataclass
class ReconcileReport:
    settled: int = 0
    republished: int = 0
    rebuilt: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.settled or self.republished or self.rebuilt)


async def rebuild_item(core: CoreResources, item: Item) -> int:
    """Set the filter to stock - sold - units still in flight; returns the units set."""
    records = await core.stock.reservations(item.item_id)
    pending = {pid: raw for shard in records.values() for pid, raw in shard.items()}
    final = await known_statuses(core.pool, list(pending))
    in_flight = 0
    for pid, raw in pending.items():
        if pid not in final:
            in_flight += _quantity(raw)
    remaining_units = max(item.remaining - in_flight, 0)
    await core.stock.set_remaining(item.item_id, remaining_units)
    return remaining_units


def _quantity(raw: bytes) -> int:
    try:
        return PurchaseMessage.decode(raw).quantity
    except MessageError:
        return 0


async def reconcile_item(
    core: CoreResources, item: Item, publish: Publish | None, stale_s: float
) -> ReconcileReport:
    report = ReconcileReport()
    levels = await core.stock.shard_levels(item.item_id)
    records = await core.stock.reservations(item.item_id)
    messages = _decode_all(records)
    final = await known_statuses(core.pool, [m.purchase_id for m in messages])
    settle = [
        Settlement(m.item_id, m.shard, m.purchase_id, m.quantity, final[m.purchase_id] == REJECTED)
        for m in messages
        if m.purchase_id in final
    ]
    if settle:
        await core.stock.settle(settle)
        report.settled = len(settle)
    now_ms = time.time() * 1000
    if publish is not None:
        for message in messages:
            if (
                message.purchase_id not in final
                and now_ms - message.admitted_at_ms > stale_s * 1000
            ):
                await publish(message)
                report.republished += 1
    if any(level is None for level in levels):
        units = await rebuild_item(core, item)
        report.rebuilt.append(item.item_id)
        log.warning("stock filter of %s was missing; rebuilt with %d units", item.item_id, units)
    return report


def _decode_all(records: dict[int, dict[str, bytes]]) -> list[PurchaseMessage]:
    messages = []
    for shard_records in records.values():
        for raw in shard_records.values():
            try:
                messages.append(PurchaseMessage.decode(raw))
            except MessageError:
                log.error("dropping an undecodable reservation record: %r", raw[:200])
    return messages


async def reconcile_once(
    core: CoreResources, publish: Publish | None, stale_s: float
) -> ReconcileReport:
    total = ReconcileReport()
    for item in await list_items(core.pool):
        report = await reconcile_item(core, item, publish, stale_s)
        total.settled += report.settled
        total.republished += report.republished
        total.rebuilt += report.rebuilt
    return total
