"""The Jepsen-style checker: a run's history plus a Postgres snapshot (and the
stock filter read once the run was quiet) -> violations.

Pure: it reads a `History` (loadtests.chaos.history), a `Snapshot` (loadtests.chaos.pgsnapshot,
which reads Postgres with its own SQL, on purpose independent of the store it
checks) and `FilterReading`s (loadtests.checks.filtercheck) and names every violation of
design.md's invariants and api.md's promises, each with the operations or rows
that show it. No rule forgives by a time window: a fault or an admin write
explains a wrong answer only by count (SOLD_OUT_UNEXPLAINED), and the only times
used are the design's own bounds, for lateness (LATE) and for 503s (UNAVAILABLE).
docs/faults.md ("What the checker enforces") cites the sentence each enforces.

* SPLIT_KEY: one (user, key) answered with two purchase ids, or stored under one
  no answer named;
* DOUBLE_APPLY: more than one purchase row for one (user, key);
* RETRY_REFUSED: a request of an accepted (user, key), same body, invoked after
  its 202 was answered, answered anything but 202 (409, 422, 429, 503, 404...);
* CHARGED_AFTER_503: a 503 for a (user, key) whose purchase charged or held
  units (confirmed, paid, cancelled, expired), with no 202 to a request of it
  invoked after the 503 was answered (a 503 after a 202 is RETRY_REFUSED);
* STATUS_BACKWARDS: a client saw a purchase's status move backwards (pending
  after final, confirmed then rejected); STATUS_MISMATCH: what a client saw
  final is not what Postgres holds;
* LOST / LATE: a 202 with no final row, or final later than 30 s after the end
  of the last fault window covering it;
* VANISHED: an accepted purchase answered 404 to its owner, any time after its
  202 was answered, faults or not;
* UNAVAILABLE: a 503 outside every fault window and its heal bound (the filter
  of an item that should have been rebuilt long ago, say);
* OVERSELL, SOLD_MISMATCH, CHECK_BROKEN, USER_LIMIT: per item, confirmed units
  <= stock, sold == confirmed units, the CHECK constraints present and true,
  per-user limits held (together: no unit sold twice);
* SOLD_OUT_UNEXPLAINED: units rejected `sold_out` beyond what, per item, the
  stock cuts (at most S_old - S_new, of purchases reserved before the cut
  answered and applied after it was invoked) and the faults that lose Redis'
  data (at most the units in flight across them) explain (loadtests.chaos.soldout);
* FILTER_DRIFT: once the run is quiet, an item whose filter units + units in
  flight != stock - sold (a unit leaked or invented), or a shard missing;
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

from loadtests.chaos.checkrun import HEAL_BOUND_S, CheckReport, RunView, Violation
from loadtests.chaos.clientchecks import (
    check_finals,
    check_keys,
    check_statuses,
    check_unavailable,
    check_vanished,
    final_deadline,
    status_allowed,
)
from loadtests.chaos.history import PUT_ITEM, History
from loadtests.chaos.pgsnapshot import Snapshot
from loadtests.chaos.retrychecks import check_charged_after_503, check_retries
from loadtests.chaos.rowchecks import (
    check_fcfs,
    check_fencing,
    check_filter_units,
    check_items,
    check_user_limits,
)
from loadtests.chaos.soldout import check_sold_out
from loadtests.checks.filtercheck import FilterReading

__all__ = ["HEAL_BOUND_S", "CheckReport", "Violation", "check", "final_deadline", "status_allowed"]

CHECKS = (
    check_keys,
    check_retries,
    check_charged_after_503,
    check_statuses,
    check_finals,
    check_vanished,
    check_unavailable,
    check_items,
    check_user_limits,
    check_sold_out,
    check_filter_units,
    check_fcfs,
    check_fencing,
)


def check(
    history: History,
    snapshot: Snapshot,
    bound_s: float = HEAL_BOUND_S,
    filter_readings: list[FilterReading] | None = None,
) -> CheckReport:
    run = RunView(history, snapshot, bound_s, filter_readings)
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
    counts["stock-lowering admin writes"] = sum(
        1 for op in run.history.of_kind(PUT_ITEM) if op.lowers_stock and op.may_have_applied
    )
