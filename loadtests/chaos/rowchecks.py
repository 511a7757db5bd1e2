"""The checks on what Postgres (and, once the run is quiet, the stock filter) holds
(loadtests.chaos.checker): no unit sold twice (stock, sold, CHECK constraints, per-user
limits), no unit leaked from or invented in the filter, first come first served
per partition, and no write under a stale lease."""

from __future__ import annotations

from collections import Counter, defaultdict

from loadtests.chaos.checkrun import RunView
from loadtests.chaos.history import PUT_ITEM, Op
from loadtests.chaos.pgsnapshot import REQUIRED_CONSTRAINTS, PurchaseRow

# Clock slack between a batch reading an item and stamping `applied_at`.
APPLY_SLACK_S = 1.0


def _confirmed_units(run: RunView) -> Counter[str]:
    units: Counter[str] = Counter()
    for row in run.snapshot.purchases:
        if row.status in ("confirmed", "paid"):
            units[row.item_id] += row.quantity
    return units


def check_items(run: RunView) -> None:
    """design.md invariant 1, "No oversell. For every item, confirmed quantity <=
    stock. Enforced by a Postgres CHECK"; and "`sold` equals what is confirmed or
    paid and not yet returned" (Testing like an adversary)."""
    missing = REQUIRED_CONSTRAINTS - run.snapshot.constraints
    if missing:
        run.violation("CHECK_BROKEN", f"constraints missing: {sorted(missing)}")
    units = _confirmed_units(run)
    for item in run.snapshot.items.values():
        line = f"item {item.item_id} stock={item.stock} sold={item.sold}"
        if item.stock < 0 or item.sold < 0 or item.sold > item.stock:
            run.violation("CHECK_BROKEN", f"{item.item_id}: row breaks a CHECK", [line])
        if units[item.item_id] > item.stock:
            run.violation(
                "OVERSELL",
                f"{item.item_id}: {units[item.item_id]} confirmed units > stock {item.stock}",
                [line],
            )
        if units[item.item_id] != item.sold:
            run.violation(
                "SOLD_MISMATCH",
                f"{item.item_id}: sold {item.sold} != {units[item.item_id]} confirmed units",
                [line],
            )


def check_user_limits(run: RunView) -> None:
    """api.md PUT /v1/items: `per_user_limit`: no user holds more units of an item."""
    held: dict[tuple[str, str], list[PurchaseRow]] = defaultdict(list)
    for row in run.snapshot.purchases:
        if row.status in ("confirmed", "paid"):
            held[(row.user_id, row.item_id)].append(row)
    for (user, item_id), rows in held.items():
        item = run.snapshot.items.get(item_id)
        units = sum(row.quantity for row in rows)
        if item is not None and units > item.per_user_limit:
            run.violation(
                "USER_LIMIT",
                f"{user} holds {units} units of {item_id}, limit {item.per_user_limit}",
                [run.row_line(row) for row in rows],
            )


def _logged(rows: list[PurchaseRow]) -> list[PurchaseRow]:
    """Rows applied from a log offset: a row a gateway decided (a 503 made final,
    services/store/unadmitted.py) has none, and no place in the log's order."""
    return [row for row in rows if row.kafka_offset is not None]


def check_fcfs(run: RunView) -> None:
    """design.md invariant 6, "First come, first served. Within an item,
    confirmations follow the admission order (Kafka offset order)"."""
    streams: dict[tuple[str, int, int], list[PurchaseRow]] = defaultdict(list)
    for row in _logged(run.snapshot.purchases):
        streams[(row.item_id, row.kafka_partition, row.log_generation)].append(row)
    # Only a write that may have added stock explains a later confirmation.
    writes = [
        op for op in run.history.of_kind(PUT_ITEM) if op.may_have_applied and not op.lowers_stock
    ]
    pairs = 0
    for (item_id, _, _), rows in streams.items():
        rows.sort(key=lambda row: row.kafka_offset or 0)  # every one has one (_logged)
        item_writes = [op for op in writes if op.item == item_id]
        for index, rejected in enumerate(rows):
            if rejected.reason != "sold_out":
                continue
            for later in rows[index + 1 :]:
                if later.status != "confirmed" or later.quantity < rejected.quantity:
                    continue
                pairs += 1
                if not _stock_written_between(item_writes, rejected, later):
                    run.violation(
                        "FCFS",
                        f"{item_id}: {later.purchase_id} confirmed {later.quantity} units"
                        f" after {rejected.purchase_id} (earlier offset) was rejected"
                        f" sold_out for {rejected.quantity}",
                        [run.row_line(rejected), run.row_line(later)],
                    )
                    break
    run.report.counts["FCFS pairs (later confirmed after sold_out)"] = pairs


def _stock_written_between(writes: list[Op], first: PurchaseRow, then: PurchaseRow) -> bool:
    return any(
        op.invoke_s <= then.applied_s
        and (op.complete_s or op.invoke_s) >= first.applied_s - APPLY_SLACK_S
        for op in writes
    )


def check_fencing(run: RunView) -> None:
    """design.md invariant 5, "a consumer that was paused ... lost its partition
    and woke up cannot commit anything"; and "A log that went backwards is
    detected" (two purchases at one offset of one generation is one not detected)."""
    logs: dict[tuple[int, int], list[PurchaseRow]] = defaultdict(list)
    for row in _logged(run.snapshot.purchases):
        logs[(row.kafka_partition, row.log_generation)].append(row)
    for (partition, generation), rows in sorted(logs.items()):
        rows.sort(key=lambda row: (row.kafka_offset or 0, row.lease_epoch))
        newest: PurchaseRow | None = None
        for before, row in zip([None, *rows], rows, strict=False):
            if before is not None and before.kafka_offset == row.kafka_offset:
                run.violation(
                    "OFFSET_REUSED",
                    f"partition {partition} generation {generation} offset"
                    f" {row.kafka_offset} holds two purchases",
                    [run.row_line(before), run.row_line(row)],
                )
            if newest is not None and row.lease_epoch < newest.lease_epoch:
                run.violation(
                    "ZOMBIE",
                    f"partition {partition} generation {generation}: offset"
                    f" {row.kafka_offset} applied under epoch {row.lease_epoch}"
                    f" after offset {newest.kafka_offset} under epoch {newest.lease_epoch}",
                    [run.row_line(newest), run.row_line(row)],
                )
            if newest is None or row.lease_epoch > newest.lease_epoch:
                newest = row


def check_filter_units(run: RunView) -> None:
    """design.md, the reconciler: the filter is "rebuilt from Postgres: remaining =
    stock - sold - units still in flight"; once the run is quiet, every item's
    filter units + units in flight == stock - sold exactly (FILTER_DRIFT: a unit
    leaked, or one invented that a later buyer would be sold_out for)."""
    if run.filter_readings is None:
        return
    run.report.counts["stock filters checked"] = len(run.filter_readings)
    for reading in run.filter_readings:
        evidence = [_item_line(run, reading.item_id), *_admin_writes(run, reading.item_id)]
        sides = (
            f"{reading.item_id}: filter {reading.filter_units} + in flight {reading.in_flight}"
            f" vs stock - sold {reading.remaining}"
        )
        if reading.filter_units is None:
            run.violation("FILTER_DRIFT", f"{sides}: a stock shard is missing", evidence)
        elif reading.drift > 0:
            run.violation("FILTER_DRIFT", f"{sides}: {reading.drift} units invented", evidence)
        elif reading.drift < 0:
            run.violation("FILTER_DRIFT", f"{sides}: {-reading.drift} units leaked", evidence)


def _item_line(run: RunView, item_id: str) -> str:
    item = run.snapshot.items.get(item_id)
    if item is None:
        return f"item {item_id}: no row"
    return f"item {item_id} stock={item.stock} sold={item.sold}"


def _admin_writes(run: RunView, item_id: str) -> list[str]:
    return [run.op_line(op) for op in run.history.of_kind(PUT_ITEM) if op.item == item_id]
