"""Pure decision logic for one batch: which purchases confirm, in offset order."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from services.schema import PAY, PURCHASE, PurchaseMessage

CONFIRMED = "confirmed"
REJECTED = "rejected"
CANCELLED = "cancelled"
PAID = "paid"
EXPIRED = "expired"
# Statuses whose units go back on sale when a confirmed purchase reaches them.
RETURNING = (CANCELLED, EXPIRED)
SOLD_OUT = "sold_out"


def returns_units(status: str, reason: str | None) -> bool:
    """Whether a decided purchase's reserved units go back on sale.

    A rejected purchase's do (a per-user limit, a copy for another item), except
    one rejected sold_out: the filter admitted more than Postgres had left (a stock
    cut while purchases were in flight, a filter rebuilt after Redis lost
    records), so its units are the excess. Given back, they would be phantom
    units that every later buyer is admitted for and then rejected sold_out
    (docs/faults.md, fourth round). A filter left short by this is refilled by
    the drift repair (services/driftrepair.py); one holding phantoms is not.
    """
    return status == REJECTED and reason != SOLD_OUT


PER_USER_LIMIT = "per_user_limit"
UNKNOWN_ITEM = "unknown_item"


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    message: PurchaseMessage


@dataclass(frozen=True, slots=True)
class ItemState:
    stock: int
    sold: int
    per_user_limit: int
    # Items with a hold sell units that must be paid within this many seconds.
    hold_s: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    record: Record
    status: str
    reason: str | None
    # A copy of a purchase that already has a final state: nothing is written for it.
    duplicate: bool = False
    # A confirmed purchase of an item with a hold must be paid by then.
    pay_by: datetime | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A purchase a cancel or pay names, as the log stands at that message's offset."""

    purchase_id: str
    user_id: str
    item_id: str
    quantity: int
    status: str
    pay_by: datetime | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """What a cancel or pay message did to the purchase it names."""

    record: Record
    # None: the purchase was not confirmed at the message's offset, so nothing changes.
    target: Target | None
    # The purchase was confirmed earlier in this same batch: it is written with
    # its new status straight away instead of being updated.
    in_batch: bool = False
    # What the purchase became: cancelled, paid, or expired (a cancel or pay that
    # found it past pay_by expires it: the deadline is decided here, in log order).
    status: str = CANCELLED


@dataclass
class BatchDecisions:
    decisions: list[Decision] = field(default_factory=list)
    sold_by_item: dict[str, int] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)

    @property
    def new(self) -> list[Decision]:
        return [d for d in self.decisions if not d.duplicate]

    def applied(self, *statuses: str) -> list[Target]:
        return [c.target for c in self.changes if c.target is not None and c.status in statuses]

    @property
    def applied_cancellations(self) -> list[Target]:
        return self.applied(CANCELLED)

    @property
    def returned(self) -> list[Target]:
        """Purchases whose units go back on sale: cancelled or expired here."""
        return self.applied(*RETURNING)

    @property
    def final_in_batch(self) -> dict[str, str]:
        """Purchases confirmed and changed in this batch: inserted with the new status."""
        return {c.target.purchase_id: c.status for c in self.changes if c.in_batch and c.target}

    @property
    def cancelled_in_batch(self) -> set[str]:
        return {pid for pid, status in self.final_in_batch.items() if status == CANCELLED}

    def in_db(self, status: str) -> list[Target]:
        """Confirmed rows already in Postgres that this batch moves to `status`."""
        return [
            c.target for c in self.changes if c.target and not c.in_batch and c.status == status
        ]

    @property
    def cancelled_in_db(self) -> list[Target]:
        return self.in_db(CANCELLED)

    @property
    def notified_ids(self) -> list[str]:
        """Purchases whose row changes (or, for a no-op cancel or pay, is worth a re-read)."""
        ids = [d.record.message.purchase_id for d in self.new]
        return ids + [c.record.message.purchase_id for c in self.changes]


def decide(
    records: list[Record],
    items: dict[str, ItemState],
    known: dict[tuple[str, str], str],
    held: dict[tuple[str, str], int],
    targets: dict[str, Target] | None = None,
    now: datetime | None = None,
) -> BatchDecisions:
    """Walk records in offset order: first come, first served (invariant 6).

    `known` maps requests (user, idempotency key) that already have a final
    state to it; `held` maps (user, item) to the units the user already holds;
    `targets` maps the purchases that cancels and pays in the batch name to their
    rows; `now` is the database's clock in the batch's transaction (pay_by and
    the deadline are judged by it). A cancel (or an expiry) of a confirmed
    purchase puts its units back for the records after it.
    """
    result = BatchDecisions()
    seen = dict(known)
    remaining = {item_id: s.stock - s.sold for item_id, s in items.items()}
    held = dict(held)
    rows = dict(targets or {})
    decided_here: set[str] = set()
    for record in sorted(records, key=lambda r: r.offset):
        msg = record.message
        if msg.kind != PURCHASE:
            target = rows.get(msg.purchase_id)
            status = _change(msg, target, items, now)
            if target is None or status is None:
                result.changes.append(Change(record, None))
                continue
            if status in RETURNING:
                _give_back(target, remaining, held, result)
            rows[msg.purchase_id] = replace(target, status=status)
            in_batch = msg.purchase_id in decided_here
            result.changes.append(Change(record, target, in_batch, status))
            continue
        request = (msg.user_id, msg.idempotency_key)
        if request in seen:
            result.decisions.append(Decision(record, seen[request], None, duplicate=True))
            continue
        status, reason = _judge(msg, items, remaining, held)
        pay_by = None
        if status == CONFIRMED:
            hold_s = items[msg.item_id].hold_s
            if hold_s is not None and now is not None:
                pay_by = now + timedelta(seconds=hold_s)
            remaining[msg.item_id] -= msg.quantity
            pair = (msg.user_id, msg.item_id)
            held[pair] = held.get(pair, 0) + msg.quantity
            result.sold_by_item[msg.item_id] = (
                result.sold_by_item.get(msg.item_id, 0) + msg.quantity
            )
        seen[request] = status
        result.decisions.append(Decision(record, status, reason, pay_by=pay_by))
        decided_here.add(msg.purchase_id)
        rows[msg.purchase_id] = Target(
            msg.purchase_id, msg.user_id, msg.item_id, msg.quantity, status, pay_by
        )
    return result


def _change(
    msg: PurchaseMessage,
    target: Target | None,
    items: dict[str, ItemState],
    now: datetime | None,
) -> str | None:
    """The status a cancel or pay moves its purchase to; None: it changes nothing.

    Only a confirmed purchase changes. One past its pay_by is expired by whatever
    message reaches it first, so a late pay (or cancel) finds it expired: paid
    and expired are decided here, by the partition's single writer, in log order.
    """
    if target is None or target.status != CONFIRMED or target.item_id not in items:
        return None
    if target.pay_by is not None and now is not None and target.pay_by < now:
        return EXPIRED
    if msg.is_cancel:
        return CANCELLED
    if msg.kind == PAY and target.pay_by is not None:
        return PAID
    return None  # a pay of a purchase not on hold: the gateway answers not_on_hold


def _give_back(
    target: Target,
    remaining: dict[str, int],
    held: dict[tuple[str, str], int],
    result: BatchDecisions,
) -> None:
    remaining[target.item_id] += target.quantity
    pair = (target.user_id, target.item_id)
    held[pair] = held.get(pair, 0) - target.quantity
    result.sold_by_item[target.item_id] = (
        result.sold_by_item.get(target.item_id, 0) - target.quantity
    )


def _judge(
    msg: PurchaseMessage,
    items: dict[str, ItemState],
    remaining: dict[str, int],
    held: dict[tuple[str, str], int],
) -> tuple[str, str | None]:
    state = items.get(msg.item_id)
    if state is None:
        return REJECTED, UNKNOWN_ITEM
    if held.get((msg.user_id, msg.item_id), 0) + msg.quantity > state.per_user_limit:
        return REJECTED, PER_USER_LIMIT
    if remaining[msg.item_id] < msg.quantity:
        return REJECTED, SOLD_OUT
    return CONFIRMED, None
