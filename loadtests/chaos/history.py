"""The history of a chaos run: every client operation and every fault window.

Written as JSON lines while the run goes, one object per line: `{"type": "op", ...}`
for a client operation (written when it completes, or is cut short) and
`{"type": "fault", ...}` for a fault window. Times are wall-clock epoch seconds,
the clock Postgres' `applied_at` uses on the same machine, so the checker can put
client operations, faults and applied purchases on one time line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from loadtests.sale.client import NO_ANSWER

PURCHASE = "purchase"
GET = "get"
PUT_ITEM = "put_item"
GET_ITEM = "get_item"
OP_KINDS = (PURCHASE, GET, PUT_ITEM, GET_ITEM)

CUT_SHORT = "client_cut_short"


@dataclass
class Op:
    """One client operation: invoked, then completed with an answer (or none)."""

    index: int
    kind: str
    client: str
    invoke_s: float
    complete_s: float | None = None
    user: str | None = None
    key: str | None = None
    item: str | None = None
    quantity: int | None = None
    http_status: int | None = None
    error: str | None = None
    purchase_id: str | None = None
    status: str | None = None
    reason: str | None = None
    # admin writes: the stock asked for, and the stock the admin read just before
    stock: int | None = None
    previous_stock: int | None = None

    def answered(self, http_status: int, body: dict[str, Any]) -> None:
        """Record the answer; a body field is kept only when it is the expected type."""
        self.complete_s = time.time()
        self.http_status = http_status
        self.error = _text(body.get("error")) or (None if http_status else "no_answer")
        self.purchase_id = _text(body.get("purchase_id")) or self.purchase_id
        self.status = _text(body.get("status"))
        self.reason = _text(body.get("reason"))
        if self.kind == GET_ITEM and isinstance(body.get("stock"), int):
            self.stock = int(body["stock"])

    @property
    def lowers_stock(self) -> bool:
        return (
            self.kind == PUT_ITEM
            and self.stock is not None
            and self.previous_stock is not None
            and self.stock < self.previous_stock
        )

    @property
    def may_have_applied(self) -> bool:
        """An admin write that changed the item, or may have (no answer)."""
        return self.kind == PUT_ITEM and self.http_status in (200, 201, NO_ANSWER, None)


@dataclass(frozen=True)
class FaultWindow:
    """A fault from its first effect (`start_s`) to its repair (`end_s`).

    `heal_by_s` is the end plus the bound the design gives the system to become
    whole again: until then a purchase may be slow (LATE) and a request may be
    answered 503 (UNAVAILABLE). It excuses no wrong answer: a `sold_out` after a
    fault is judged by count (loadtests.chaos.soldout), not by this time.
    """

    index: int
    fault: str
    target: str
    start_s: float
    end_s: float
    heal_by_s: float
    # a window on one item only (None: every item); the nemesis writes none
    item: str | None = None

    def overlaps(self, start_s: float, end_s: float) -> bool:
        return self.start_s <= end_s and start_s <= self.heal_by_s

    def covers_item(self, item: str | None) -> bool:
        return self.item is None or self.item == item


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    faults: list[FaultWindow] = field(default_factory=list)

    def accepted(self) -> dict[str, float]:
        """Purchase id -> when a client first learned of its 202."""
        first: dict[str, float] = {}
        for op in self.ops:
            if op.kind == PURCHASE and op.http_status == 202 and op.purchase_id:
                done = op.complete_s if op.complete_s is not None else op.invoke_s
                first[op.purchase_id] = min(done, first.get(op.purchase_id, done))
        return first

    def of_kind(self, kind: str) -> list[Op]:
        return [op for op in self.ops if op.kind == kind]


class HistoryWriter:
    """Appends operations and faults to a JSON-lines file and keeps them in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.history = History()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = path.open("w", encoding="utf-8")
        self._next = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _write(self, kind: str, record: dict[str, Any]) -> None:
        if self._file is None:
            raise RuntimeError(f"history {self.path} is closed")
        self._file.write(json.dumps({"type": kind, **record}, separators=(",", ":")) + "\n")
        self._file.flush()

    @contextmanager
    def op(self, kind: str, client: str, **details: Any) -> Iterator[Op]:
        """Invoke an operation; the caller fills in the answer. Written when the
        block exits, also when it is cut short (then `error` says so)."""
        op = Op(self._next, kind, client, time.time(), **details)
        self._next += 1
        try:
            yield op
        finally:
            if op.complete_s is None:
                op.complete_s = time.time()
                if op.http_status is None:
                    op.error = op.error or CUT_SHORT
            self.history.ops.append(op)
            self._write("op", asdict(op))

    def fault(self, window: FaultWindow) -> None:
        self.history.faults.append(window)
        self._write("fault", asdict(window))


def read_history(path: Path) -> History:
    history = History()
    op_fields = {f.name for f in fields(Op)}
    fault_fields = {f.name for f in fields(FaultWindow)}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record.pop("type") == "op":
                history.ops.append(Op(**{k: v for k, v in record.items() if k in op_fields}))
            else:
                history.faults.append(
                    FaultWindow(**{k: v for k, v in record.items() if k in fault_fields})
                )
    history.ops.sort(key=lambda op: op.index)
    return history


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
