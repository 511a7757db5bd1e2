"""The checker on hand-made histories: it must name every kind of violation, and
stay quiet where a fault window or an admin write excuses what it sees."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from loadtests.checker import check, final_deadline
from loadtests.history import (
    GET,
    PURCHASE,
    PUT_ITEM,
    FaultWindow,
    History,
    HistoryWriter,
    Op,
    read_history,
)
from loadtests.pgsnapshot import REQUIRED_CONSTRAINTS, ItemRow, PurchaseRow, Snapshot
from loadtests.stall import partition_of

T0 = 1_000_000.0


class Run:
    """A history and a snapshot built by hand; times are seconds after T0."""

    def __init__(self) -> None:
        self.history = History()
        self.snapshot = Snapshot(constraints=REQUIRED_CONSTRAINTS)
        self._offsets = itertools.count()

    def item(self, item_id: str, stock: int, sold: int, limit: int = 3) -> None:
        self.snapshot.items[item_id] = ItemRow(item_id, stock, sold, limit)

    def op(self, kind: str, at: float, took: float = 0.1, **fields: Any) -> Op:
        op = Op(len(self.history.ops), kind, "c", T0 + at, T0 + at + took, **fields)
        self.history.ops.append(op)
        return op

    def buy(self, at: float, pid: str, user: str, key: str, item: str, status: int = 202) -> Op:
        return self.op(
            PURCHASE, at, user=user, key=key, item=item, quantity=1, http_status=status,
            purchase_id=pid if status == 202 else None,
            error={503: "unavailable", 409: "sold_out"}.get(status),
        )  # fmt: skip

    def read(
        self, at: float, pid: str, status: str | None, http: int = 200, took: float = 0.1
    ) -> Op:
        return self.op(GET, at, took, purchase_id=pid, http_status=http, status=status, user="u")

    def fault(self, start: float, end: float) -> None:
        index = len(self.history.faults)
        self.history.faults.append(
            FaultWindow(index, "restart_redis", "redis", T0 + start, T0 + end, T0 + end + 30)
        )


def _row(run: Run, pid: str, item: str, status: str = "confirmed", **fields: Any) -> None:
    values: dict[str, Any] = {
        "user_id": f"user-{pid}",
        "idempotency_key": f"key-{pid}",
        "quantity": 1,
        "reason": None,
        "kafka_partition": 0,
        "kafka_offset": next(run._offsets),
        "log_generation": 0,
        "lease_epoch": 1,
        "admitted_s": 1.0,
        "applied_s": 1.5,
    } | fields
    values["admitted_s"] += T0
    values["applied_s"] += T0
    run.snapshot.purchases.append(PurchaseRow(pid, item_id=item, status=status, **values))


def _client_side_violations(run: Run) -> None:
    run.item("ok", stock=100, sold=5)
    # SPLIT_KEY: one (user, key), two purchase ids
    run.buy(1, "P1", "u1", "k1", "ok")
    run.buy(2, "P1x", "u1", "k1", "ok")
    _row(run, "P1", "ok", user_id="u1", idempotency_key="k1")
    # DOUBLE_APPLY: two rows for one (user, key)
    run.item("dbl", stock=10, sold=2)
    _row(run, "P2a", "dbl", user_id="u2", idempotency_key="k2")
    _row(run, "P2b", "dbl", user_id="u2", idempotency_key="k2")
    # STATUS_BACKWARDS: confirmed, then (later, not overlapping) pending
    run.read(3, "P3", "confirmed")
    run.read(4, "P3", "pending")
    _row(run, "P3", "ok")
    # STATUS_MISMATCH: a client saw confirmed, Postgres says rejected
    run.read(5, "P4", "confirmed")
    _row(run, "P4", "ok", status="rejected", reason="per_user_limit")
    # LOST: a 202 with no row
    run.buy(6, "P5", "u5", "k5", "ok")
    # LATE: final 50 s after its 202, no fault near it
    run.buy(10, "P6", "user-P6", "key-P6", "ok")
    _row(run, "P6", "ok", admitted_s=10, applied_s=60)
    # VANISHED: accepted, then 404 to its owner, no fault
    run.buy(12, "P7", "user-P7", "key-P7", "ok")
    _row(run, "P7", "ok", admitted_s=12, applied_s=12.5)
    run.read(14, "P7", None, http=404)
    # UNAVAILABLE: a 503 long after (and before) any fault
    run.buy(20, "", "u8", "k8", "ok", status=503)


def _store_side_violations(run: Run) -> None:
    # OVERSELL and SOLD_MISMATCH: 2 units confirmed of a stock of 1, sold says 1
    run.item("over", stock=1, sold=1)
    _row(run, "P9a", "over")
    _row(run, "P9b", "over")
    # CHECK_BROKEN: a row with sold > stock (and so sold != confirmed units)
    run.item("broken", stock=1, sold=2)
    # USER_LIMIT: one user holds 2 units, the limit is 1
    run.item("lim", stock=10, sold=2, limit=1)
    _row(run, "P10a", "lim", user_id="u10")
    _row(run, "P10b", "lim", user_id="u10")
    # CLEAN_SOLD_OUT: rejected sold_out, no fault, no lowering write
    run.item("so", stock=1, sold=1)
    _row(run, "P11a", "so")
    _row(run, "P11b", "so", status="rejected", reason="sold_out", admitted_s=29, applied_s=30)
    # FCFS: in a fault window (so not CLEAN_SOLD_OUT), a later offset confirmed
    # as many units as an earlier one was refused, no admin write in between
    run.fault(200, 201)
    run.item("fc", stock=2, sold=2)
    _row(run, "P12a", "fc", status="rejected", reason="sold_out", quantity=2,
         admitted_s=199, applied_s=200, kafka_partition=3, kafka_offset=0)  # fmt: skip
    _row(run, "P12b", "fc", quantity=2, admitted_s=199.5, applied_s=200.5,
         kafka_partition=3, kafka_offset=1)  # fmt: skip
    # ZOMBIE: offset 11 applied under epoch 2 after offset 10 under epoch 3
    run.item("z", stock=10, sold=2)
    _row(run, "P13a", "z", kafka_partition=5, kafka_offset=10, lease_epoch=3)
    _row(run, "P13b", "z", kafka_partition=5, kafka_offset=11, lease_epoch=2)
    # OFFSET_REUSED: two purchases at one offset of one log generation
    run.item("re", stock=10, sold=2)
    _row(run, "P14a", "re", kafka_partition=6, kafka_offset=7)
    _row(run, "P14b", "re", kafka_partition=6, kafka_offset=7)


def test_every_kind_of_violation_is_named_with_its_evidence() -> None:
    run = Run()
    _client_side_violations(run)
    _store_side_violations(run)

    report = check(run.history, run.snapshot)

    assert report.kinds() == {
        "SPLIT_KEY", "DOUBLE_APPLY", "STATUS_BACKWARDS", "STATUS_MISMATCH", "LOST", "LATE",
        "VANISHED", "UNAVAILABLE", "OVERSELL", "SOLD_MISMATCH", "CHECK_BROKEN", "USER_LIMIT",
        "CLEAN_SOLD_OUT", "FCFS", "ZOMBIE", "OFFSET_REUSED",
    }  # fmt: skip
    by_kind = {v.kind: v for v in report.violations}
    assert "P1x" in by_kind["SPLIT_KEY"].detail
    assert any("op#1" in line for line in by_kind["SPLIT_KEY"].evidence)
    assert "P11b" in by_kind["CLEAN_SOLD_OUT"].detail
    assert "P12b" in by_kind["FCFS"].detail and "P12a" in by_kind["FCFS"].detail
    assert "epoch 2" in by_kind["ZOMBIE"].detail
    assert all(v.evidence for v in report.violations if v.kind != "CHECK_BROKEN")
    assert report.counts["operations"] == len(run.history.ops)
    assert report.counts["faults"] == 1


def test_missing_constraints_are_named() -> None:
    run = Run()
    run.snapshot.constraints = frozenset()
    assert check(run.history, run.snapshot).kinds() == {"CHECK_BROKEN"}


def test_fault_windows_and_admin_writes_excuse_what_they_explain() -> None:
    run = Run()
    run.item("hot", stock=3, sold=3)
    run.fault(10, 12)
    # a sold_out rejection during a fault window
    _row(run, "A", "hot", status="rejected", reason="sold_out", admitted_s=11, applied_s=11.5)
    # a 202 final 35 s later: late for the plain bound, in time after the fault's end
    run.buy(9, "B", "user-B", "key-B", "hot")
    _row(run, "B", "hot", admitted_s=9, applied_s=41, kafka_partition=1)
    # pending then confirmed, and two reads that overlap in time (no order between them)
    run.read(9.5, "B", "pending")
    run.read(41.5, "B", "confirmed", took=2)
    run.read(42, "B", "pending")  # invoked before the previous read completed
    # a stock-lowering write on "cold" excuses a sold_out rejection on "cold"
    run.item("cold", stock=2, sold=2)
    run.op(PUT_ITEM, 100, item="cold", stock=2, previous_stock=4, http_status=200)
    _row(run, "C", "cold", status="rejected", reason="sold_out", admitted_s=99, applied_s=101)
    # a stock-raising write between a refusal and later confirmations explains them
    run.op(PUT_ITEM, 120, item="cold", stock=4, previous_stock=2, http_status=200)
    _row(run, "D", "cold", quantity=1, admitted_s=120, applied_s=121)
    _row(run, "F", "cold", quantity=1, admitted_s=121, applied_s=122)
    run.snapshot.items["cold"] = ItemRow("cold", 4, 2, 3)
    run.snapshot.items["hot"] = ItemRow("hot", 3, 1, 3)

    report = check(run.history, run.snapshot)

    assert report.ok, [v.describe() for v in report.violations]
    assert report.counts["sold_out rejections excused by a window"] == 2
    assert report.counts["FCFS pairs (later confirmed after sold_out)"] == 2


def test_a_lowering_write_does_not_explain_a_later_confirmation() -> None:
    run = Run()
    run.item("x", stock=3, sold=2)
    run.fault(10, 12)  # keeps the refusal itself excused: only FCFS is in question
    run.op(PUT_ITEM, 11, item="x", stock=3, previous_stock=5, http_status=200)
    _row(run, "R", "x", status="rejected", reason="sold_out", admitted_s=10, applied_s=11)
    _row(run, "C1", "x", admitted_s=12, applied_s=13)
    _row(run, "C2", "x", admitted_s=12, applied_s=13)
    assert check(run.history, run.snapshot).kinds() == {"FCFS"}


def test_a_lowering_write_on_another_item_excuses_nothing() -> None:
    run = Run()
    run.item("x", stock=1, sold=1)
    run.op(PUT_ITEM, 100, item="y", stock=2, previous_stock=4, http_status=200)
    _row(run, "X1", "x")
    _row(run, "X2", "x", status="rejected", reason="sold_out", admitted_s=99, applied_s=101)
    assert check(run.history, run.snapshot).kinds() == {"CLEAN_SOLD_OUT"}


def test_final_deadline_follows_overlapping_fault_windows() -> None:
    near = FaultWindow(0, "pause_consumer", "c", T0 + 20, T0 + 29, T0 + 59)
    chained = FaultWindow(1, "restart_broker", "b", T0 + 55, T0 + 56, T0 + 86)
    far = FaultWindow(2, "restart_redis", "r", T0 + 500, T0 + 501, T0 + 531)
    assert final_deadline(T0, [far]) == T0 + 30
    assert final_deadline(T0, [near, far]) == T0 + 59
    assert final_deadline(T0, [near, chained, far]) == T0 + 86


def test_history_round_trips_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    with HistoryWriter(path) as writer:
        with writer.op(PURCHASE, "buyer-1", user="u", key="k", item="i", quantity=2) as op:
            op.answered(202, {"purchase_id": "p", "status": "pending"})
        with writer.op(GET, "buyer-1", purchase_id="p"):
            pass  # cut short: no answer recorded
        writer.fault(FaultWindow(0, "kill_gateway", "gateway 0", 1.0, 2.0, 32.0))
    history = read_history(path)
    assert history.ops == writer.history.ops
    assert history.faults == writer.history.faults
    assert history.accepted() == {"p": history.ops[0].complete_s}
    assert history.ops[1].error == "client_cut_short"


def test_the_stall_report_places_items_where_the_producer_does() -> None:
    partitions = list(range(12))
    for n in range(200):
        item = f"item-{n}"
        expected = DefaultPartitioner()(item.encode(), partitions, partitions)
        assert partition_of(item, 12) == expected


def test_purchases_a_gateway_made_final_have_no_offset_and_no_place_in_the_log() -> None:
    """A 503 after an uncertain produce makes the purchase final (rejected:
    unavailable) at no offset (gateway/producefault.py): two of them in one
    partition reuse no offset, and order nothing."""
    run = Run()
    run.fault(0, 5)
    run.item("g", stock=5, sold=1)
    for n in (1, 2):
        run.buy(n, "", f"u{n}", f"k{n}", "g", status=503)
        _row(run, f"P{n}", "g", user_id=f"u{n}", idempotency_key=f"k{n}", status="rejected",
             reason="unavailable", kafka_partition=2, kafka_offset=None)  # fmt: skip
    run.buy(3, "P3", "user-P3", "key-P3", "g")
    _row(run, "P3", "g", kafka_partition=2, admitted_s=3, applied_s=3.5)

    report = check(run.history, run.snapshot)

    assert report.violations == []
