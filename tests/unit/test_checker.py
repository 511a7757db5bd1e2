"""The checker on hand-made histories: it must name every kind of violation, and
stay quiet where a fault or an admin write explains what it sees (by count; the
rules one by one, each fired and quiet: test_checker_rules.py)."""

from __future__ import annotations

from pathlib import Path

from aiokafka.partitioner import DefaultPartitioner

from loadtests.chaos.checker import check, final_deadline
from loadtests.chaos.history import GET, PURCHASE, FaultWindow, HistoryWriter, read_history
from loadtests.chaos.pgsnapshot import ItemRow
from loadtests.chaos.stall import partition_of
from tests.unit.checkerbuild import T0, Run, reading, refused, row


def _client_side_violations(run: Run) -> None:
    run.item("ok", stock=100, sold=5)
    # SPLIT_KEY: one (user, key), two purchase ids
    run.buy(1, "P1", "u1", "k1", "ok")
    run.buy(2, "P1x", "u1", "k1", "ok")
    row(run, "P1", "ok", user_id="u1", idempotency_key="k1")
    # DOUBLE_APPLY: two rows for one (user, key)
    run.item("dbl", stock=10, sold=2)
    row(run, "P2a", "dbl", user_id="u2", idempotency_key="k2")
    row(run, "P2b", "dbl", user_id="u2", idempotency_key="k2")
    # STATUS_BACKWARDS: confirmed, then (later, not overlapping) pending
    run.read(3, "P3", "confirmed")
    run.read(4, "P3", "pending")
    row(run, "P3", "ok")
    # STATUS_MISMATCH: a client saw confirmed, Postgres says rejected
    run.read(5, "P4", "confirmed")
    row(run, "P4", "ok", status="rejected", reason="per_user_limit")
    # LOST: a 202 with no row
    run.buy(6, "P5", "u5", "k5", "ok")
    # LATE: final 50 s after its 202, no fault near it
    run.buy(10, "P6", "user-P6", "key-P6", "ok")
    row(run, "P6", "ok", admitted_s=10, applied_s=60)
    # VANISHED: accepted, then 404 to its owner
    run.buy(12, "P7", "user-P7", "key-P7", "ok")
    row(run, "P7", "ok", admitted_s=12, applied_s=12.5)
    run.read(14, "P7", None, http=404, user="user-P7")
    # UNAVAILABLE: a 503 long after (and before) any fault
    run.buy(20, "", "u8", "k8", "ok", status=503)
    # RETRY_REFUSED: accepted, then the same request again answered 429
    run.buy(21, "P15", "user-P15", "key-P15", "ok")
    run.buy(22, "", "user-P15", "key-P15", "ok", status=429, error="rate_limited")
    row(run, "P15", "ok", admitted_s=21, applied_s=21.5)
    # CHARGED_AFTER_503: answered 503 (nothing reserved), then confirmed
    run.buy(23, "", "user-P16", "key-P16", "ok", status=503)
    row(run, "P16", "ok", admitted_s=23, applied_s=23.5)


def _store_side_violations(run: Run) -> None:
    # OVERSELL and SOLD_MISMATCH: 2 units confirmed of a stock of 1, sold says 1
    run.item("over", stock=1, sold=1)
    row(run, "P9a", "over")
    row(run, "P9b", "over")
    # CHECK_BROKEN: a row with sold > stock (and so sold != confirmed units)
    run.item("broken", stock=1, sold=2)
    # USER_LIMIT: one user holds 2 units, the limit is 1
    run.item("lim", stock=10, sold=2, limit=1)
    row(run, "P10a", "lim", user_id="u10")
    row(run, "P10b", "lim", user_id="u10")
    # SOLD_OUT_UNEXPLAINED: rejected sold_out, no fault, no lowering write
    run.item("so", stock=1, sold=1)
    row(run, "P11a", "so")
    refused(run, "P11b", "so", admitted=29, applied=30)
    # FCFS: after a Redis restart with both in flight (so the refusal is
    # explained), a later offset confirmed as many units as an earlier one was
    # refused, no admin write in between
    run.fault(200, 201)
    run.item("fc", stock=2, sold=2)
    row(run, "P12a", "fc", status="rejected", reason="sold_out", quantity=2,
         admitted_s=199, applied_s=200, kafka_partition=3, kafka_offset=0)  # fmt: skip
    row(run, "P12b", "fc", quantity=2, admitted_s=199.5, applied_s=200.5,
         kafka_partition=3, kafka_offset=1)  # fmt: skip
    # ZOMBIE: offset 11 applied under epoch 2 after offset 10 under epoch 3
    run.item("z", stock=10, sold=2)
    row(run, "P13a", "z", kafka_partition=5, kafka_offset=10, lease_epoch=3)
    row(run, "P13b", "z", kafka_partition=5, kafka_offset=11, lease_epoch=2)
    # OFFSET_REUSED: two purchases at one offset of one log generation
    run.item("re", stock=10, sold=2)
    row(run, "P14a", "re", kafka_partition=6, kafka_offset=7)
    row(run, "P14b", "re", kafka_partition=6, kafka_offset=7)


def test_every_kind_of_violation_is_named_with_its_evidence() -> None:
    run = Run()
    _client_side_violations(run)
    _store_side_violations(run)

    # FILTER_DRIFT: the quiet filter holds a unit Postgres does not know
    readings = [reading("ok", 95, 0, 95), reading("z", 9, 0, 8)]

    report = check(run.history, run.snapshot, filter_readings=readings)

    assert report.kinds() == {
        "SPLIT_KEY", "DOUBLE_APPLY", "STATUS_BACKWARDS", "STATUS_MISMATCH", "LOST", "LATE",
        "VANISHED", "UNAVAILABLE", "OVERSELL", "SOLD_MISMATCH", "CHECK_BROKEN", "USER_LIMIT",
        "SOLD_OUT_UNEXPLAINED", "FCFS", "ZOMBIE", "OFFSET_REUSED", "RETRY_REFUSED",
        "CHARGED_AFTER_503", "FILTER_DRIFT",
    }  # fmt: skip
    by_kind = {v.kind: v for v in report.violations}
    assert "P1x" in by_kind["SPLIT_KEY"].detail
    assert any("op#1" in line for line in by_kind["SPLIT_KEY"].evidence)
    assert "P11b" in by_kind["SOLD_OUT_UNEXPLAINED"].detail
    assert "key-P15" in by_kind["RETRY_REFUSED"].detail and "429" in by_kind["RETRY_REFUSED"].detail
    assert "key-P16" in by_kind["CHARGED_AFTER_503"].detail
    assert (
        "z:" in by_kind["FILTER_DRIFT"].detail
        and "1 units invented" in by_kind["FILTER_DRIFT"].detail
    )
    assert "P12b" in by_kind["FCFS"].detail and "P12a" in by_kind["FCFS"].detail
    assert "epoch 2" in by_kind["ZOMBIE"].detail
    assert all(v.evidence for v in report.violations if v.kind != "CHECK_BROKEN")
    assert report.counts["operations"] == len(run.history.ops)
    assert report.counts["faults"] == 1


def test_missing_constraints_are_named() -> None:
    run = Run()
    run.snapshot.constraints = frozenset()
    assert check(run.history, run.snapshot).kinds() == {"CHECK_BROKEN"}


def test_faults_and_admin_writes_explain_what_they_can() -> None:
    run = Run()
    run.item("hot", stock=3, sold=3)
    run.fault(10, 12)
    # a sold_out rejection after a Redis restart that B was in flight across
    refused(run, "A", "hot", admitted=11, applied=11.5)
    # a 202 final 35 s later: late for the plain bound, in time after the fault's end
    run.buy(9, "B", "user-B", "key-B", "hot")
    row(run, "B", "hot", admitted_s=9, applied_s=41, kafka_partition=1)
    # pending then confirmed, and two reads that overlap in time (no order between them)
    run.read(9.5, "B", "pending")
    run.read(41.5, "B", "confirmed", took=2)
    run.read(42, "B", "pending")  # invoked before the previous read completed
    # a stock cut on "cold" explains a sold_out rejection in flight across it
    run.item("cold", stock=2, sold=2)
    run.cut(100, "cold", old=4, new=2)
    refused(run, "C", "cold", admitted=99, applied=101)
    # a stock-raising write between a refusal and later confirmations explains them
    run.cut(120, "cold", old=2, new=4)
    row(run, "D", "cold", quantity=1, admitted_s=120, applied_s=121)
    row(run, "F", "cold", quantity=1, admitted_s=121, applied_s=122)
    run.snapshot.items["cold"] = ItemRow("cold", 4, 2, 3)
    run.snapshot.items["hot"] = ItemRow("hot", 3, 1, 3)

    report = check(run.history, run.snapshot)

    assert report.ok, [v.describe() for v in report.violations]
    assert report.counts["sold_out units explained by a stock cut"] == 1
    assert report.counts["sold_out units explained by a data-losing fault"] == 1
    assert report.counts["FCFS pairs (later confirmed after sold_out)"] == 2


def test_a_lowering_write_does_not_explain_a_later_confirmation() -> None:
    run = Run()
    run.item("x", stock=3, sold=2)
    run.fault(10, 12)  # explains the refusal itself: only FCFS is in question
    run.cut(11, "x", old=5, new=3)
    refused(run, "R", "x", admitted=10, applied=11)
    row(run, "C1", "x", admitted_s=12, applied_s=13)
    row(run, "C2", "x", admitted_s=12, applied_s=13)
    assert check(run.history, run.snapshot).kinds() == {"FCFS"}


def test_a_lowering_write_on_another_item_excuses_nothing() -> None:
    run = Run()
    run.item("x", stock=1, sold=1)
    run.cut(100, "y", old=4, new=2)
    row(run, "X1", "x")
    refused(run, "X2", "x", admitted=99, applied=101)
    assert check(run.history, run.snapshot).kinds() == {"SOLD_OUT_UNEXPLAINED"}


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
        row(run, f"P{n}", "g", user_id=f"u{n}", idempotency_key=f"k{n}", status="rejected",
             reason="unavailable", kafka_partition=2, kafka_offset=None)  # fmt: skip
    run.buy(3, "P3", "user-P3", "key-P3", "g")
    row(run, "P3", "g", kafka_partition=2, admitted_s=3, applied_s=3.5)

    report = check(run.history, run.snapshot)

    assert report.violations == []
