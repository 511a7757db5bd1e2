"""The checks on what Postgres holds (loadtests.checker): no unit sold twice (stock,
sold, CHECK constraints, per-user limits), no sold_out in a clean stretch, first
come first served per partition, and no write under a stale lease."""

from __future__ import annotations

from collections import Counter, defaultdict

from loadtests.checkrun import RunView
from loadtests.history import PURCHASE, PUT_ITEM, Op
from loadtests.pgsnapshot import REQUIRED_CONSTRAINTS, PurchaseRow

# Clock slack between a batch reading an item and stamping `applied_at`.
APPLY_SLACK_S = 1.0


def _confirmed_units(run: RunView) -> Counter[str]:
    units: Counter[str] = Counter()
    for row in run.snapshot.purchases:
        if row.status in ("confirmed", "paid"):
            units[row.item_id] += row.quantity
    return units


def check_items(run: RunView) -> None:
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


def _first_request_s(run: RunView) -> dict[tuple[str, str], float]:
    first: dict[tuple[str, str], float] = {}
    for op in run.history.of_kind(PURCHASE):
        if op.user and op.key:
            pair = (op.user, op.key)
            first[pair] = min(op.invoke_s, first.get(pair, op.invoke_s))
    return first


def check_clean_sold_out(run: RunView) -> None:
    first = _first_request_s(run)
    sold_out = [row for row in run.snapshot.purchases if row.reason == "sold_out"]
    excused = 0
    for row in sold_out:
        began = min(first.get((row.user_id, row.idempotency_key), row.admitted_s), row.admitted_s)
        if run.in_window(row.item_id, began, row.applied_s):
            excused += 1
            continue
        run.violation(
            "CLEAN_SOLD_OUT",
            f"{row.purchase_id}: accepted, then rejected sold_out with no fault"
            " and no stock-lowering write on its item",
            [run.row_line(row), *_ops_of(run, row)],
        )
    run.report.counts["sold_out rejections"] = len(sold_out)
    run.report.counts["sold_out rejections excused by a window"] = excused


def _ops_of(run: RunView, row: PurchaseRow) -> list[str]:
    return [
        run.op_line(op)
        for op in run.history.ops
        if op.user == row.user_id and op.key == row.idempotency_key
    ]


def _logged(rows: list[PurchaseRow]) -> list[PurchaseRow]:
    """Rows applied from a log offset: a row a gateway decided (a 503 made final,
    services/store/unadmitted.py) has none, and no place in the log's order."""
    return [row for row in rows if row.kafka_offset is not None]


def check_fcfs(run: RunView) -> None:
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
