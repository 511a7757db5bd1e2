"""The Jepsen-style checker: a run's history plus a Postgres snapshot -> violations.

Pure: it reads a `History` (loadtests.history) and a `Snapshot`
(loadtests.pgsnapshot, which reads Postgres with its own SQL, on purpose
independent of the store it checks) and names every violation of design.md's
invariants and api.md's promises, each with the operations or rows that show it:

* SPLIT_KEY: one (user, key) answered with two purchase ids, or stored under one
  no answer named;
* DOUBLE_APPLY: more than one purchase row for one (user, key);
* STATUS_BACKWARDS: a client saw a purchase's status move backwards (pending
  after final, confirmed then rejected); STATUS_MISMATCH: what a client saw
  final is not what Postgres holds;
* LOST / LATE: a 202 with no final row, or final later than 30 s after the end
  of the last fault window covering it;
* VANISHED: an accepted purchase answered 404 to its owner outside any fault;
* UNAVAILABLE: a 503 outside every fault window and its heal bound (the filter
  of an item that should have been rebuilt long ago, say);
* OVERSELL, SOLD_MISMATCH, CHECK_BROKEN, USER_LIMIT: per item, confirmed units
  <= stock, sold == confirmed units, the CHECK constraints present and true,
  per-user limits held (together: no unit sold twice);
* CLEAN_SOLD_OUT: a purchase rejected `sold_out` whose life (first request ..
  applied) touched no fault window and no stock-lowering admin write;
* FCFS: in one partition and log generation, a `sold_out` rejection followed (at
  a later offset) by a confirmation of at least as many units of the same item,
  with no admin write in between that could have added stock;
* ZOMBIE: in one partition and generation, a later offset applied under an older
  lease epoch; OFFSET_REUSED: two purchases at one offset (a log that went
  backwards was not noticed).

POST answers are admission receipts (`pending` by api.md, also on a replay), so
statuses are taken from GET answers only.
"""

from __future__ import annotations

from loadtests.checkrun import HEAL_BOUND_S, CheckReport, RunView, Violation
from loadtests.clientchecks import (
    check_finals,
    check_keys,
    check_statuses,
    check_unavailable,
    check_vanished,
    final_deadline,
    status_allowed,
)
from loadtests.history import History
from loadtests.pgsnapshot import Snapshot
from loadtests.rowchecks import (
    check_clean_sold_out,
    check_fcfs,
    check_fencing,
    check_items,
    check_user_limits,
)

__all__ = ["HEAL_BOUND_S", "CheckReport", "Violation", "check", "final_deadline", "status_allowed"]

CHECKS = (
    check_keys,
    check_statuses,
    check_finals,
    check_vanished,
    check_unavailable,
    check_items,
    check_user_limits,
    check_clean_sold_out,
    check_fcfs,
    check_fencing,
)


def check(history: History, snapshot: Snapshot, bound_s: float = HEAL_BOUND_S) -> CheckReport:
    run = RunView(history, snapshot, bound_s)
    _count(run)
    for one_check in CHECKS:
        one_check(run)
    return run.report


def _count(run: RunView) -> None:
    counts = run.report.counts
    counts.update(f"ops {op.kind}" for op in run.history.ops)
    counts["operations"] = len(run.history.ops)
    counts["accepted purchases (202)"] = len(run.history.accepted())
    counts["purchase rows"] = len(run.snapshot.purchases)
    counts["items"] = len(run.snapshot.items)
    counts["faults"] = len(run.history.faults)
    counts["stock-lowering admin writes"] = len(run.windows) - len(run.history.faults)
