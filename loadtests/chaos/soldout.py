"""SOLD_OUT_UNEXPLAINED (loadtests.chaos.checker): a 202 that ended `rejected: sold_out`
is forgiven by count, never by time.

design.md: "A 202 promises a final answer, not a unit: after a fault the answer
can be `rejected` with `reason: "sold_out"` where the filter admitted too many.
In a clean run it never is (invariant 4)." The filter admits too many for two
reasons only, and each can explain a known number of units:

* a stock cut from S_old to S_new (an admin PUT that may have applied): the
  purchases reserved before it answered and not yet applied when it was invoked
  had their units taken from the old stock; at most S_old - S_new of their units
  can be refused. A purchase admitted after the PUT answered saw the new stock;
* a fault that loses Redis' data (restart_redis, restart_stack, any flush or
  failover): the filter is rebuilt as stock - sold - units in flight, and only
  the in-flight records lost with it (purchases admitted before the fault ended
  and applied after it began) make it admit too many; at most those units can be
  refused, among purchases applied after the fault began.

Per item, the refused units are matched to what each cut and fault may explain
(a maximum matching: a refusal that two explanations cover takes whichever has
room). Every unit beyond is a violation naming its purchase.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from loadtests.chaos.checkrun import RunView, answered_s
from loadtests.chaos.history import PUT_ITEM, FaultWindow, Op
from loadtests.chaos.pgsnapshot import PurchaseRow

SOLD_OUT = "sold_out"
REDIS_DATA_LOSING = frozenset({"restart_redis", "restart_stack"})
STOCK_CUT = "stock cut"
DATA_LOSS = "data-losing fault"


def loses_filter_data(fault: str) -> bool:
    """The faults after which the filter is rebuilt from Postgres."""
    return fault in REDIS_DATA_LOSING or "flush" in fault or "failover" in fault


@dataclass(frozen=True, slots=True)
class Explanation:
    kind: str  # STOCK_CUT or DATA_LOSS
    line: str  # evidence: the admin write or the fault window, and its budget
    units: int  # at most this many refused units
    covers: frozenset[str]  # purchase ids it may explain


def check_sold_out(run: RunView) -> None:
    refused: dict[str, list[PurchaseRow]] = defaultdict(list)
    for row in run.snapshot.purchases:
        if row.status == "rejected" and row.reason == SOLD_OUT:
            refused[row.item_id].append(row)
    counts = run.report.counts
    counts["sold_out rejections"] = sum(len(rows) for rows in refused.values())
    counts["sold_out units"] = sum(row.quantity for rows in refused.values() for row in rows)
    # Present even when 0, so the run's table says what was explained.
    counts[f"sold_out units explained by a {STOCK_CUT}"] += 0
    counts[f"sold_out units explained by a {DATA_LOSS}"] += 0
    counts["sold_out units unexplained"] += 0
    for item_id, rows in sorted(refused.items()):
        _judge_item(run, item_id, rows)


def _judge_item(run: RunView, item_id: str, refused: list[PurchaseRow]) -> None:
    explanations = [*_cuts(run, item_id, refused), *_data_losses(run, item_id, refused)]
    demand = {row.purchase_id: row.quantity for row in refused}
    eligible = {
        row.purchase_id: [n for n, e in enumerate(explanations) if row.purchase_id in e.covers]
        for row in refused
    }
    flow = assign(demand, [e.units for e in explanations], eligible)
    explained: Counter[str] = Counter()
    for (purchase_id, index), units in flow.items():
        explained[purchase_id] += units
        run.report.counts[f"sold_out units explained by a {explanations[index].kind}"] += units
    budget = [
        f"{e.line}: may explain {e.units} units, of purchases {sorted(e.covers)[:6]}"
        for e in explanations
    ] or [f"no stock cut and no data-losing fault on {item_id} explains any"]
    for row in refused:
        beyond = row.quantity - explained[row.purchase_id]
        if beyond <= 0:
            continue
        run.report.counts["sold_out units unexplained"] += beyond
        run.violation(
            "SOLD_OUT_UNEXPLAINED",
            f"{row.purchase_id}: accepted, then rejected sold_out for {beyond} of its"
            f" {row.quantity} units beyond what the cuts and faults on {item_id} explain",
            [run.row_line(row), *budget, *run.ops_of(row.user_id, row.idempotency_key)],
        )


def _cuts(run: RunView, item_id: str, refused: list[PurchaseRow]) -> list[Explanation]:
    first_202 = run.first_202
    cuts = []
    for op in run.history.of_kind(PUT_ITEM):
        if op.item != item_id or not op.lowers_stock or not op.may_have_applied:
            continue
        assert op.stock is not None and op.previous_stock is not None  # lowers_stock says so
        covers = frozenset(
            row.purchase_id
            for row in refused
            if _reserved_before(row, first_202.get((row.user_id, row.idempotency_key)), op)
            and row.applied_s >= op.invoke_s
        )
        line = f"{run.op_line(op)} (cut {op.previous_stock}->{op.stock})"
        cuts.append(Explanation(STOCK_CUT, line, op.previous_stock - op.stock, covers))
    return cuts


def _reserved_before(row: PurchaseRow, accepted: Op | None, cut: Op) -> bool:
    """The purchase took its units before the cut answered: its (applied copy's)
    admission began before, or a client had its 202 before."""
    answered = answered_s(cut)
    return row.admitted_s < answered or (accepted is not None and answered_s(accepted) < answered)


def _data_losses(run: RunView, item_id: str, refused: list[PurchaseRow]) -> list[Explanation]:
    rows = [row for row in run.snapshot.purchases if row.item_id == item_id]
    return [
        Explanation(
            DATA_LOSS,
            run.window_line(window),
            sum(row.quantity for row in rows if _in_flight_across(row, window)),
            frozenset(row.purchase_id for row in refused if row.applied_s >= window.start_s),
        )
        for window in run.history.faults
        if loses_filter_data(window.fault) and window.covers_item(item_id)
    ]


def _in_flight_across(row: PurchaseRow, window: FaultWindow) -> bool:
    """Admitted before the fault ended, applied after it began: its reservation
    record may have been lost with Redis' data."""
    return row.admitted_s <= window.end_s and row.applied_s >= window.start_s


def assign(
    demand: dict[str, int], capacity: list[int], eligible: dict[str, list[int]]
) -> Counter[tuple[str, int]]:
    """A maximum assignment of demanded units to explanations with room (bipartite
    matching, one unit at a time along augmenting paths); (purchase, explanation)
    -> units. A unit that finds no path now never finds one later."""
    flow: Counter[tuple[str, int]] = Counter()
    used = [0] * len(capacity)
    for purchase_id, units in demand.items():
        for _unit in range(units):
            if not _augment(purchase_id, capacity, eligible, flow, used):
                break
    return +flow


def _augment(
    start: str,
    capacity: list[int],
    eligible: dict[str, list[int]],
    flow: Counter[tuple[str, int]],
    used: list[int],
) -> bool:
    """One more unit for `start`, moving units of others to other explanations
    where that makes room (breadth first)."""
    reached_by: dict[int, str] = {}  # explanation -> the purchase that reached it
    moved_from: dict[str, int] = {}  # purchase -> the explanation it would leave
    queue, seen = [start], {start}
    for purchase_id in queue:
        for index in eligible.get(purchase_id, []):
            if index in reached_by:
                continue
            reached_by[index] = purchase_id
            if used[index] < capacity[index]:
                _shift(start, index, reached_by, moved_from, flow)
                used[index] += 1
                return True
            for (holder, held), units in list(flow.items()):
                if held == index and units > 0 and holder not in seen:
                    seen.add(holder)
                    moved_from[holder] = index
                    queue.append(holder)
    return False


def _shift(
    start: str,
    free: int,
    reached_by: dict[int, str],
    moved_from: dict[str, int],
    flow: Counter[tuple[str, int]],
) -> None:
    index = free
    while True:
        purchase_id = reached_by[index]
        flow[(purchase_id, index)] += 1
        if purchase_id == start:
            return
        index = moved_from[purchase_id]
        flow[(purchase_id, index)] -= 1
