"""What every check of the Jepsen-style checker (loadtests.chaos.checker) shares: the run
under check (history, snapshot, fault windows, the stock filter read once the run
was quiet), the violations it finds, and the one-line forms of operations, rows
and windows its evidence is written in."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from loadtests.chaos.history import PURCHASE, PUT_ITEM, FaultWindow, History, Op
from loadtests.chaos.pgsnapshot import PurchaseRow, Snapshot
from loadtests.checks.filtercheck import FilterReading

HEAL_BOUND_S = 30.0
EVIDENCE_SHOWN = 6


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


class RunView:
    """One run under check, and the report its checks fill."""

    def __init__(
        self,
        history: History,
        snapshot: Snapshot,
        bound_s: float = HEAL_BOUND_S,
        filter_readings: list[FilterReading] | None = None,
    ):
        self.history = history
        self.snapshot = snapshot
        self.bound_s = bound_s
        # None: the filter was not read (a checker run on a saved history).
        self.filter_readings = filter_readings
        self.report = CheckReport()
        self.t0 = min((op.invoke_s for op in history.ops), default=0.0)
        self.rows_by_id = {row.purchase_id: row for row in snapshot.purchases}

    def violation(self, kind: str, detail: str, evidence: Iterable[str] = ()) -> None:
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

    @cached_property
    def first_202(self) -> dict[tuple[str, str], Op]:
        """(user, key) -> the 202 answered first to a request of it."""
        first: dict[tuple[str, str], Op] = {}
        for op in self.history.of_kind(PURCHASE):
            if op.http_status == 202 and op.purchase_id and op.user and op.key:
                pair = (op.user, op.key)
                known = first.get(pair)
                if known is None or answered_s(op) < answered_s(known):
                    first[pair] = op
        return first

    @cached_property
    def ops_by_key(self) -> dict[tuple[str, str], list[Op]]:
        """(user, key) -> every operation naming it (POSTs and GETs), in history order."""
        ops: dict[tuple[str, str], list[Op]] = defaultdict(list)
        for op in self.history.ops:
            if op.user and op.key:
                ops[(op.user, op.key)].append(op)
        return ops

    def ops_of(self, user: str, key: str) -> list[str]:
        return [self.op_line(op) for op in self.ops_by_key.get((user, key), [])]


def answered_s(op: Op) -> float:
    """When the client had the answer (an op cut short: when it gave up)."""
    return op.invoke_s if op.complete_s is None else op.complete_s
