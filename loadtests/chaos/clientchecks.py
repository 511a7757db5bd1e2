"""The checks on what the clients saw (loadtests.chaos.checker): one purchase per key,
statuses only forward and matching Postgres, every 202 final in time, no
accepted purchase answered 404 to its owner, no 503 outside a fault."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from loadtests.chaos.checkrun import HEAL_BOUND_S, RunView, answered_s
from loadtests.chaos.history import GET, PURCHASE, FaultWindow, Op
from loadtests.chaos.pgsnapshot import PurchaseRow

PENDING = "pending"
RANK = {PENDING: 0, "confirmed": 1, "rejected": 1, "cancelled": 2, "paid": 2, "expired": 2}
AFTER_CONFIRMED = frozenset({"cancelled", "paid", "expired"})


def status_allowed(before: str, after: str) -> bool:
    """api.md: pending -> confirmed | rejected; confirmed -> cancelled | paid | expired."""
    if before in (after, PENDING):
        return True
    return before == "confirmed" and after in AFTER_CONFIRMED


def final_deadline(
    accepted_s: float, faults: Iterable[FaultWindow], bound_s: float = HEAL_BOUND_S
) -> float:
    """`bound_s` after the 202, or after the end of the last fault window that
    overlaps the time the purchase was allowed to take (design.md, invariant 3)."""
    windows = [w for w in faults if w.item is None]
    deadline = accepted_s + bound_s
    while True:
        extended = max(
            (w.end_s + bound_s for w in windows if w.start_s <= deadline and w.end_s >= accepted_s),
            default=deadline,
        )
        if extended <= deadline:
            return deadline
        deadline = extended


def check_keys(run: RunView) -> None:
    """api.md: "The same user sending the same Idempotency-Key again gets the same
    purchase_id" (SPLIT_KEY); design.md invariant 2: "A purchase (one user + one
    idempotency key) is applied at most once" (DOUBLE_APPLY)."""
    answered: dict[tuple[str, str], dict[str, Op]] = defaultdict(dict)
    for op in run.history.of_kind(PURCHASE):
        if op.http_status == 202 and op.purchase_id and op.user and op.key:
            answered[(op.user, op.key)].setdefault(op.purchase_id, op)
    rows: dict[tuple[str, str], list[PurchaseRow]] = defaultdict(list)
    for row in run.snapshot.purchases:
        rows[(row.user_id, row.idempotency_key)].append(row)
    run.report.counts["keys checked"] = len(answered)
    for pair, ids in answered.items():
        stored = {row.purchase_id for row in rows.get(pair, [])}
        if len(ids) > 1 or not stored <= set(ids):
            run.violation(
                "SPLIT_KEY",
                f"user {pair[0]} key {pair[1]} answered {sorted(ids)}, stored {sorted(stored)}",
                [run.op_line(op) for op in ids.values()]
                + [run.row_line(row) for row in rows.get(pair, [])],
            )
    for pair, found in rows.items():
        if len(found) > 1:
            run.violation(
                "DOUBLE_APPLY",
                f"user {pair[0]} key {pair[1]} has {len(found)} purchase rows",
                [run.row_line(row) for row in found],
            )


def check_statuses(run: RunView) -> None:
    """api.md: "A purchase's status moves only forward" (STATUS_BACKWARDS), and
    what a client read final is what Postgres holds (STATUS_MISMATCH)."""
    seen: dict[str, list[Op]] = defaultdict(list)
    for op in run.history.of_kind(GET):
        if op.http_status == 200 and op.purchase_id and op.status in RANK:
            seen[op.purchase_id].append(op)
    run.report.counts["status reads checked"] = sum(len(ops) for ops in seen.values())
    for purchase_id, reads in seen.items():
        reads.sort(key=lambda op: op.invoke_s)
        _check_sequence(run, purchase_id, reads)
        _check_against_row(run, purchase_id, reads)


def _check_sequence(run: RunView, purchase_id: str, reads: list[Op]) -> None:
    for later_index, later in enumerate(reads):
        for earlier in reads[:later_index]:
            # Only reads that did not overlap in time have an order to keep.
            ordered = earlier.complete_s is not None and earlier.complete_s < later.invoke_s
            if ordered and not status_allowed(str(earlier.status), str(later.status)):
                run.violation(
                    "STATUS_BACKWARDS",
                    f"{purchase_id}: {earlier.status} then {later.status}",
                    [run.op_line(earlier), run.op_line(later)],
                )
                return


def _check_against_row(run: RunView, purchase_id: str, reads: list[Op]) -> None:
    row = run.rows_by_id.get(purchase_id)
    final = [op for op in reads if op.status != PENDING]
    if row is None or not final:
        return
    if not status_allowed(str(final[-1].status), row.status):
        run.violation(
            "STATUS_MISMATCH",
            f"{purchase_id}: a client saw {final[-1].status}, Postgres holds {row.status}",
            [run.op_line(final[-1]), run.row_line(row)],
        )


def check_finals(run: RunView) -> None:
    """design.md invariant 3: "Every request answered 202 reaches confirmed or
    rejected within a bound (default 30 s)" (LOST, LATE). The bound is used for
    lateness only: it excuses no wrong answer."""
    accepted = run.history.accepted()
    first_202 = {
        op.purchase_id: op
        for op in reversed(run.history.of_kind(PURCHASE))
        if op.http_status == 202 and op.purchase_id
    }
    for purchase_id, accepted_s in sorted(accepted.items(), key=lambda kv: kv[1]):
        row = run.rows_by_id.get(purchase_id)
        deadline = final_deadline(accepted_s, run.history.faults, run.bound_s)
        evidence = [run.op_line(first_202[purchase_id])]
        if row is None or row.status not in RANK or row.status == PENDING:
            run.violation("LOST", f"{purchase_id}: answered 202, never final", evidence)
        elif row.applied_s > deadline:
            run.violation(
                "LATE",
                f"{purchase_id}: final {row.applied_s - accepted_s:.1f}s after its 202,"
                f" past its bound (t={deadline - run.t0:.2f})",
                [*evidence, run.row_line(row)],
            )


def check_vanished(run: RunView) -> None:
    """api.md, GET /v1/purchases/{id}: "404 for a purchase of another user": its
    owner gets a 404 never, once the 202 was answered, whatever the faults."""
    owners = {op.purchase_id: op for op in run.first_202.values()}
    for op in run.history.of_kind(GET):
        accepted = owners.get(op.purchase_id or "")
        if op.http_status != 404 or accepted is None or op.user != accepted.user:
            continue
        if op.invoke_s >= answered_s(accepted):
            row = run.rows_by_id.get(op.purchase_id or "")
            run.violation(
                "VANISHED",
                f"{op.purchase_id}: accepted, then 404 to its owner",
                [run.op_line(accepted), run.op_line(op)] + ([run.row_line(row)] if row else []),
            )


def check_unavailable(run: RunView) -> None:
    """api.md: "503 unavailable when the queue cannot take it": a fault, or the
    time the design gives the system to heal after one (HEAL_BOUND_S)."""
    faults = run.history.faults
    stuck = [
        op
        for op in run.history.ops
        if op.http_status == 503
        and not any(w.overlaps(op.invoke_s, op.complete_s or op.invoke_s) for w in faults)
    ]
    if stuck:
        items = sorted({op.item or "?" for op in stuck})
        run.violation(
            "UNAVAILABLE",
            f"{len(stuck)} answers 503 outside every fault window and its heal bound,"
            f" on {len(items)} items (e.g. {items[:5]})",
            [run.op_line(op) for op in stuck],
        )
