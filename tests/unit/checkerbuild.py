"""Hand-made histories and snapshots for the checker's unit tests: a `Run` holds a
History and a Snapshot; times are seconds after T0."""

from __future__ import annotations

import itertools
from typing import Any

from loadtests.chaos.history import GET, PURCHASE, PUT_ITEM, FaultWindow, History, Op
from loadtests.chaos.pgsnapshot import REQUIRED_CONSTRAINTS, ItemRow, PurchaseRow, Snapshot
from loadtests.checks.filtercheck import FilterReading

T0 = 1_000_000.0
ERRORS = {503: "unavailable", 409: "sold_out", 0: "no_answer"}


class Run:
    """A history and a snapshot built by hand; times are seconds after T0."""

    def __init__(self) -> None:
        self.history = History()
        self.snapshot = Snapshot(constraints=REQUIRED_CONSTRAINTS)
        self.offsets = itertools.count()

    def item(self, item_id: str, stock: int, sold: int, limit: int = 3) -> None:
        self.snapshot.items[item_id] = ItemRow(item_id, stock, sold, limit)

    def op(self, kind: str, at: float, took: float = 0.1, **fields: Any) -> Op:
        op = Op(len(self.history.ops), kind, "c", T0 + at, T0 + at + took, **fields)
        self.history.ops.append(op)
        return op

    def buy(
        self,
        at: float,
        pid: str,
        user: str,
        key: str,
        item: str,
        status: int = 202,
        quantity: int = 1,
        error: str | None = None,
        took: float = 0.1,
    ) -> Op:
        """A POST /v1/purchases answered `status` (NO_ANSWER: none)."""
        return self.op(
            PURCHASE, at, took, user=user, key=key, item=item, quantity=quantity,
            http_status=status, purchase_id=pid if status == 202 else None,
            error=error or ERRORS.get(status),
        )  # fmt: skip

    def read(
        self,
        at: float,
        pid: str,
        status: str | None,
        http: int = 200,
        took: float = 0.1,
        user: str = "u",
    ) -> Op:
        return self.op(GET, at, took, purchase_id=pid, http_status=http, status=status, user=user)

    def fault(self, start: float, end: float, kind: str = "restart_redis") -> None:
        index = len(self.history.faults)
        self.history.faults.append(
            FaultWindow(index, kind, "target", T0 + start, T0 + end, T0 + end + 30)
        )

    def cut(self, at: float, item: str, old: int, new: int, took: float = 0.1) -> Op:
        """An admin PUT that lowered (or raised) the stock from `old` to `new`."""
        return self.op(
            PUT_ITEM, at, took, item=item, stock=new, previous_stock=old, http_status=200
        )


def row(run: Run, pid: str, item: str, status: str = "confirmed", **fields: Any) -> None:
    values: dict[str, Any] = {
        "user_id": f"user-{pid}",
        "idempotency_key": f"key-{pid}",
        "quantity": 1,
        "reason": None,
        "kafka_partition": 0,
        "kafka_offset": next(run.offsets),
        "log_generation": 0,
        "lease_epoch": 1,
        "admitted_s": 1.0,
        "applied_s": 1.5,
    } | fields
    values["admitted_s"] += T0
    values["applied_s"] += T0
    run.snapshot.purchases.append(PurchaseRow(pid, item_id=item, status=status, **values))


def refused(run: Run, pid: str, item: str, admitted: float, applied: float, **fields: Any) -> None:
    """A purchase row rejected sold_out."""
    row(run, pid, item, "rejected", reason="sold_out", admitted_s=admitted, applied_s=applied,
        **fields)  # fmt: skip


def reading(
    item_id: str, filter_units: int | None, in_flight: int, remaining: int
) -> FilterReading:
    return FilterReading(item_id, filter_units, in_flight, remaining)
