"""What every check of the Jepsen-style checker (loadtests.checker) shares: the run
under check (history, snapshot, fault windows), the violations it finds, and
the one-line forms of operations, rows and windows its evidence is written in."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from loadtests.history import PUT_ITEM, FaultWindow, History, Op
from loadtests.pgsnapshot import PurchaseRow, Snapshot

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

    def __init__(self, history: History, snapshot: Snapshot, bound_s: float = HEAL_BOUND_S):
        self.history = history
        self.snapshot = snapshot
        self.bound_s = bound_s
        self.report = CheckReport()
        self.t0 = min((op.invoke_s for op in history.ops), default=0.0)
        self.rows_by_id = {row.purchase_id: row for row in snapshot.purchases}
        self.windows = [*history.faults, *self._lowering_windows()]

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

    def in_window(self, item: str, start_s: float, end_s: float) -> bool:
        return any(w.covers_item(item) and w.overlaps(start_s, end_s) for w in self.windows)
