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

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from loadtests.history import GET, PURCHASE, PUT_ITEM, FaultWindow, History, Op
from loadtests.pgsnapshot import REQUIRED_CONSTRAINTS, PurchaseRow, Snapshot

HEAL_BOUND_S = 30.0
# Clock slack between a batch reading an item and stamping `applied_at`.
APPLY_SLACK_S = 1.0
EVIDENCE_SHOWN = 6
PENDING = "pending"
RANK = {PENDING: 0, "confirmed": 1, "rejected": 1, "cancelled": 2, "paid": 2, "expired": 2}
AFTER_CONFIRMED = frozenset({"cancelled", "paid", "expired"})


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    detail: str
    evidence: tuple[str, ...] = ()

    def describe(self) -> str:
        lines = [f"{self.kind}: {self.detail}"]
        lines += [f"    {line}" for line in self.evidence[:EVIDENCE_SHOWN]]
        if len(self.evidence) > EVIDENCE_SHOWN:
            lines.append(f"    ... {len(self.evidence) - EVIDENCE_SHOWN} more")
        return "\n".join(lines)


@dataclass
class CheckReport:
    violations: list[Violation] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> set[str]:
        return {violation.kind for violation in self.violations}


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


class Checker:
    def __init__(self, history: History, snapshot: Snapshot, bound_s: float = HEAL_BOUND_S):
        self.history = history
        self.snapshot = snapshot
        self.bound_s = bound_s
        self.report = CheckReport()
        self.t0 = min((op.invoke_s for op in history.ops), default=0.0)
        self.rows_by_id = {row.purchase_id: row for row in snapshot.purchases}
        self.windows = [*history.faults, *self._lowering_windows()]

    def run(self) -> CheckReport:
        self._count()
        self._check_keys()
        self._check_statuses()
        self._check_finals()
        self._check_vanished()
        self._check_unavailable()
        self._check_items()
        self._check_user_limits()
        self._check_clean_sold_out()
        self._check_fcfs()
        self._check_fencing()
        return self.report

    # -- helpers -------------------------------------------------------------

    def _violation(self, kind: str, detail: str, evidence: Iterable[str] = ()) -> None:
        self.report.violations.append(Violation(kind, detail, tuple(evidence)))

    def op_line(self, op: Op) -> str:
        done = "?" if op.complete_s is None else f"{op.complete_s - self.t0:.2f}"
        answer = f"{op.http_status} {op.error or ''}".strip()
        seen = f" status={op.status}" if op.status else ""
        return (
            f"op#{op.index} {op.client} {op.kind} t={op.invoke_s - self.t0:.2f}..{done}"
            f" user={op.user} key={op.key} item={op.item} q={op.quantity}"
            f" -> {answer} id={op.purchase_id}{seen}"
            + (f" stock={op.stock} was={op.previous_stock}" if op.kind == PUT_ITEM else "")
        )

    def row_line(self, row: PurchaseRow) -> str:
        return (
            f"row {row.purchase_id} user={row.user_id} key={row.idempotency_key}"
            f" item={row.item_id} q={row.quantity} {row.status}"
            f"{'/' + row.reason if row.reason else ''} p{row.kafka_partition}"
            f" gen{row.log_generation} off{row.kafka_offset} epoch{row.lease_epoch}"
            f" admitted t={row.admitted_s - self.t0:.2f} applied t={row.applied_s - self.t0:.2f}"
            f" by {row.applied_by}"
        )

    def window_line(self, window: FaultWindow) -> str:
        return (
            f"fault#{window.index} {window.fault} ({window.target})"
            f" t={window.start_s - self.t0:.2f}..{window.end_s - self.t0:.2f}"
            f" heal by {window.heal_by_s - self.t0:.2f}"
        )

    def _lowering_windows(self) -> list[FaultWindow]:
        """An admin write that lowered stock may leave the filter holding more than
        is left: a window on that item, healed like a fault."""
        return [
            FaultWindow(
                -1 - op.index,
                "lower_stock",
                f"op#{op.index}",
                op.invoke_s,
                op.complete_s or op.invoke_s,
                (op.complete_s or op.invoke_s) + self.bound_s,
                item=op.item,
            )
            for op in self.history.of_kind(PUT_ITEM)
            if op.lowers_stock and op.may_have_applied
        ]

    def _in_window(self, item: str, start_s: float, end_s: float) -> bool:
        return any(w.covers_item(item) and w.overlaps(start_s, end_s) for w in self.windows)

    def _count(self) -> None:
        counts = self.report.counts
        counts.update(f"ops {op.kind}" for op in self.history.ops)
        counts["operations"] = len(self.history.ops)
        counts["accepted purchases (202)"] = len(self.history.accepted())
        counts["purchase rows"] = len(self.snapshot.purchases)
        counts["items"] = len(self.snapshot.items)
        counts["faults"] = len(self.history.faults)
        counts["stock-lowering admin writes"] = len(self.windows) - len(self.history.faults)

    # -- idempotency -----------------------------------------------------------

    def _check_keys(self) -> None:
        answered: dict[tuple[str, str], dict[str, Op]] = defaultdict(dict)
        for op in self.history.of_kind(PURCHASE):
            if op.http_status == 202 and op.purchase_id and op.user and op.key:
                answered[(op.user, op.key)].setdefault(op.purchase_id, op)
        rows: dict[tuple[str, str], list[PurchaseRow]] = defaultdict(list)
        for row in self.snapshot.purchases:
            rows[(row.user_id, row.idempotency_key)].append(row)
        self.report.counts["keys checked"] = len(answered)
        for pair, ids in answered.items():
            stored = {row.purchase_id for row in rows.get(pair, [])}
            if len(ids) > 1 or not stored <= set(ids):
                self._violation(
                    "SPLIT_KEY",
                    f"user {pair[0]} key {pair[1]} answered {sorted(ids)}, stored {sorted(stored)}",
                    [self.op_line(op) for op in ids.values()]
                    + [self.row_line(row) for row in rows.get(pair, [])],
                )
        for pair, found in rows.items():
            if len(found) > 1:
                self._violation(
                    "DOUBLE_APPLY",
                    f"user {pair[0]} key {pair[1]} has {len(found)} purchase rows",
                    [self.row_line(row) for row in found],
                )

    # -- statuses --------------------------------------------------------------

    def _check_statuses(self) -> None:
        seen: dict[str, list[Op]] = defaultdict(list)
        for op in self.history.of_kind(GET):
            if op.http_status == 200 and op.purchase_id and op.status in RANK:
                seen[op.purchase_id].append(op)
        self.report.counts["status reads checked"] = sum(len(ops) for ops in seen.values())
        for purchase_id, reads in seen.items():
            reads.sort(key=lambda op: op.invoke_s)
            self._check_sequence(purchase_id, reads)
            self._check_against_row(purchase_id, reads)

    def _check_sequence(self, purchase_id: str, reads: list[Op]) -> None:
        for later_index, later in enumerate(reads):
            for earlier in reads[:later_index]:
                # Only reads that did not overlap in time have an order to keep.
                ordered = earlier.complete_s is not None and earlier.complete_s < later.invoke_s
                if ordered and not status_allowed(str(earlier.status), str(later.status)):
                    self._violation(
                        "STATUS_BACKWARDS",
                        f"{purchase_id}: {earlier.status} then {later.status}",
                        [self.op_line(earlier), self.op_line(later)],
                    )
                    return

    def _check_against_row(self, purchase_id: str, reads: list[Op]) -> None:
        row = self.rows_by_id.get(purchase_id)
        final = [op for op in reads if op.status != PENDING]
        if row is None or not final:
            return
        if not status_allowed(str(final[-1].status), row.status):
            self._violation(
                "STATUS_MISMATCH",
                f"{purchase_id}: a client saw {final[-1].status}, Postgres holds {row.status}",
                [self.op_line(final[-1]), self.row_line(row)],
            )

    # -- no lost acceptance ---------------------------------------------------

    def _check_finals(self) -> None:
        accepted = self.history.accepted()
        first_202 = {
            op.purchase_id: op
            for op in reversed(self.history.of_kind(PURCHASE))
            if op.http_status == 202 and op.purchase_id
        }
        for purchase_id, accepted_s in sorted(accepted.items(), key=lambda kv: kv[1]):
            row = self.rows_by_id.get(purchase_id)
            deadline = final_deadline(accepted_s, self.history.faults, self.bound_s)
            evidence = [self.op_line(first_202[purchase_id])]
            if row is None or row.status not in RANK or row.status == PENDING:
                self._violation("LOST", f"{purchase_id}: answered 202, never final", evidence)
            elif row.applied_s > deadline:
                self._violation(
                    "LATE",
                    f"{purchase_id}: final {row.applied_s - accepted_s:.1f}s after its 202,"
                    f" past its bound (t={deadline - self.t0:.2f})",
                    [*evidence, self.row_line(row)],
                )

    def _check_vanished(self) -> None:
        accepted = self.history.accepted()
        for op in self.history.of_kind(GET):
            known_since = accepted.get(op.purchase_id or "")
            if op.http_status != 404 or known_since is None or op.invoke_s < known_since:
                continue
            if not self._in_window(op.item or "", op.invoke_s, op.complete_s or op.invoke_s):
                self._violation(
                    "VANISHED",
                    f"{op.purchase_id}: accepted, then 404 to its owner outside any fault",
                    [self.op_line(op)],
                )

    def _check_unavailable(self) -> None:
        faults = self.history.faults
        stuck = [
            op
            for op in self.history.ops
            if op.http_status == 503
            and not any(w.overlaps(op.invoke_s, op.complete_s or op.invoke_s) for w in faults)
        ]
        if stuck:
            items = sorted({op.item or "?" for op in stuck})
            self._violation(
                "UNAVAILABLE",
                f"{len(stuck)} answers 503 outside every fault window and its heal bound,"
                f" on {len(items)} items (e.g. {items[:5]})",
                [self.op_line(op) for op in stuck],
            )

    # -- stock -------------------------------------------------------------------

    def _confirmed_units(self) -> Counter[str]:
        units: Counter[str] = Counter()
        for row in self.snapshot.purchases:
            if row.status in ("confirmed", "paid"):
                units[row.item_id] += row.quantity
        return units

    def _check_items(self) -> None:
        missing = REQUIRED_CONSTRAINTS - self.snapshot.constraints
        if missing:
            self._violation("CHECK_BROKEN", f"constraints missing: {sorted(missing)}")
        units = self._confirmed_units()
        for item in self.snapshot.items.values():
            line = f"item {item.item_id} stock={item.stock} sold={item.sold}"
            if item.stock < 0 or item.sold < 0 or item.sold > item.stock:
                self._violation("CHECK_BROKEN", f"{item.item_id}: row breaks a CHECK", [line])
            if units[item.item_id] > item.stock:
                self._violation(
                    "OVERSELL",
                    f"{item.item_id}: {units[item.item_id]} confirmed units > stock {item.stock}",
                    [line],
                )
            if units[item.item_id] != item.sold:
                self._violation(
                    "SOLD_MISMATCH",
                    f"{item.item_id}: sold {item.sold} != {units[item.item_id]} confirmed units",
                    [line],
                )

    def _check_user_limits(self) -> None:
        held: dict[tuple[str, str], list[PurchaseRow]] = defaultdict(list)
        for row in self.snapshot.purchases:
            if row.status in ("confirmed", "paid"):
                held[(row.user_id, row.item_id)].append(row)
        for (user, item_id), rows in held.items():
            item = self.snapshot.items.get(item_id)
            units = sum(row.quantity for row in rows)
            if item is not None and units > item.per_user_limit:
                self._violation(
                    "USER_LIMIT",
                    f"{user} holds {units} units of {item_id}, limit {item.per_user_limit}",
                    [self.row_line(row) for row in rows],
                )

    # -- clean stretches --------------------------------------------------------

    def _first_request_s(self) -> dict[tuple[str, str], float]:
        first: dict[tuple[str, str], float] = {}
        for op in self.history.of_kind(PURCHASE):
            if op.user and op.key:
                pair = (op.user, op.key)
                first[pair] = min(op.invoke_s, first.get(pair, op.invoke_s))
        return first

    def _check_clean_sold_out(self) -> None:
        first = self._first_request_s()
        sold_out = [row for row in self.snapshot.purchases if row.reason == "sold_out"]
        excused = 0
        for row in sold_out:
            began = min(
                first.get((row.user_id, row.idempotency_key), row.admitted_s), row.admitted_s
            )
            if self._in_window(row.item_id, began, row.applied_s):
                excused += 1
                continue
            self._violation(
                "CLEAN_SOLD_OUT",
                f"{row.purchase_id}: accepted, then rejected sold_out with no fault"
                " and no stock-lowering write on its item",
                [self.row_line(row), *self._ops_of(row)],
            )
        self.report.counts["sold_out rejections"] = len(sold_out)
        self.report.counts["sold_out rejections excused by a window"] = excused

    def _ops_of(self, row: PurchaseRow) -> list[str]:
        return [
            self.op_line(op)
            for op in self.history.ops
            if op.user == row.user_id and op.key == row.idempotency_key
        ]

    def _check_fcfs(self) -> None:
        streams: dict[tuple[str, int, int], list[PurchaseRow]] = defaultdict(list)
        for row in self.snapshot.purchases:
            streams[(row.item_id, row.kafka_partition, row.log_generation)].append(row)
        # Only a write that may have added stock explains a later confirmation.
        writes = [
            op
            for op in self.history.of_kind(PUT_ITEM)
            if op.may_have_applied and not op.lowers_stock
        ]
        pairs = 0
        for (item_id, _, _), rows in streams.items():
            rows.sort(key=lambda row: row.kafka_offset)
            item_writes = [op for op in writes if op.item == item_id]
            for index, rejected in enumerate(rows):
                if rejected.reason != "sold_out":
                    continue
                for later in rows[index + 1 :]:
                    if later.status != "confirmed" or later.quantity < rejected.quantity:
                        continue
                    pairs += 1
                    if not self._stock_written_between(item_writes, rejected, later):
                        self._violation(
                            "FCFS",
                            f"{item_id}: {later.purchase_id} confirmed {later.quantity} units"
                            f" after {rejected.purchase_id} (earlier offset) was rejected"
                            f" sold_out for {rejected.quantity}",
                            [self.row_line(rejected), self.row_line(later)],
                        )
                        break
        self.report.counts["FCFS pairs (later confirmed after sold_out)"] = pairs

    @staticmethod
    def _stock_written_between(writes: list[Op], first: PurchaseRow, then: PurchaseRow) -> bool:
        return any(
            op.invoke_s <= then.applied_s
            and (op.complete_s or op.invoke_s) >= first.applied_s - APPLY_SLACK_S
            for op in writes
        )

    # -- fencing -------------------------------------------------------------------

    def _check_fencing(self) -> None:
        logs: dict[tuple[int, int], list[PurchaseRow]] = defaultdict(list)
        for row in self.snapshot.purchases:
            logs[(row.kafka_partition, row.log_generation)].append(row)
        for (partition, generation), rows in sorted(logs.items()):
            rows.sort(key=lambda row: (row.kafka_offset, row.lease_epoch))
            newest: PurchaseRow | None = None
            for before, row in zip([None, *rows], rows, strict=False):
                if before is not None and before.kafka_offset == row.kafka_offset:
                    self._violation(
                        "OFFSET_REUSED",
                        f"partition {partition} generation {generation} offset"
                        f" {row.kafka_offset} holds two purchases",
                        [self.row_line(before), self.row_line(row)],
                    )
                if newest is not None and row.lease_epoch < newest.lease_epoch:
                    self._violation(
                        "ZOMBIE",
                        f"partition {partition} generation {generation}: offset"
                        f" {row.kafka_offset} applied under epoch {row.lease_epoch}"
                        f" after offset {newest.kafka_offset} under epoch {newest.lease_epoch}",
                        [self.row_line(newest), self.row_line(row)],
                    )
                if newest is None or row.lease_epoch > newest.lease_epoch:
                    newest = row


def check(history: History, snapshot: Snapshot, bound_s: float = HEAL_BOUND_S) -> CheckReport:
    return Checker(history, snapshot, bound_s).run()
