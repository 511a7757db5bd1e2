"""Pure decision logic for one batch: which purchases confirm, in offset order."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from services.schema import PurchaseMessage

CONFIRMED = "confirmed"
REJECTED = "rejected"
CANCELLED = "cancelled"
SOLD_OUT = "sold_out"
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


@dataclass(frozen=True, slots=True)
class Decision:
    record: Record
    status: str
    reason: str | None
    # A copy of a purchase that already has a final state: nothing is written for it.
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """A purchase a cancel names, as the log stands at the cancel's offset."""

    purchase_id: str
    user_id: str
    item_id: str
    quantity: int
    status: str


@dataclass(frozen=True, slots=True)
class Cancellation:
    record: Record
    # None: the purchase was not confirmed at the cancel's offset, so nothing changes.
    target: Target | None
    # The purchase was confirmed earlier in this same batch: it is written as
    # cancelled straight away instead of being updated.
    in_batch: bool = False


@dataclass
class BatchDecisions:
    decisions: list[Decision] = field(default_factory=list)
    sold_by_item: dict[str, int] = field(default_factory=dict)
    cancellations: list[Cancellation] = field(default_factory=list)

    @property
    def new(self) -> list[Decision]:
        return [d for d in self.decisions if not d.duplicate]

    @property
    def applied_cancellations(self) -> list[Target]:
        return [c.target for c in self.cancellations if c.target is not None]

    @property
    def cancelled_in_batch(self) -> set[str]:
        """Purchases confirmed and cancelled in this batch: inserted as cancelled."""
        return {c.target.purchase_id for c in self.cancellations if c.in_batch and c.target}

    @property
    def cancelled_in_db(self) -> list[Target]:
        """Confirmed rows already in Postgres that this batch cancels."""
        return [c.target for c in self.cancellations if c.target and not c.in_batch]

    @property
    def notified_ids(self) -> list[str]:
        """Purchases whose row changes (or, for a no-op cancel, is worth a re-read)."""
        ids = [d.record.message.purchase_id for d in self.new]
        return ids + [c.record.message.purchase_id for c in self.cancellations]


def decide(
    records: list[Record],
    items: dict[str, ItemState],
    known: dict[tuple[str, str], str],
    held: dict[tuple[str, str], int],
    targets: dict[str, Target] | None = None,
) -> BatchDecisions:
    """Walk records in offset order: first come, first served (invariant 6).

    `known` maps requests (user, idempotency key) that already have a final
    state to it; `held` maps (user, item) to the units the user already holds;
    `targets` maps the purchases that cancels in the batch name to their rows.
    A cancel of a confirmed purchase puts its units back for the records after it.
    """
    result = BatchDecisions()
    seen = dict(known)
    remaining = {item_id: s.stock - s.sold for item_id, s in items.items()}
    held = dict(held)
    rows = dict(targets or {})
    decided_here: set[str] = set()
    for record in sorted(records, key=lambda r: r.offset):
        msg = record.message
        if msg.is_cancel:
            target = _cancel(rows.get(msg.purchase_id), items, remaining, held, result)
            if target is not None:
                rows[msg.purchase_id] = replace(target, status=CANCELLED)
            in_batch = target is not None and msg.purchase_id in decided_here
            result.cancellations.append(Cancellation(record, target, in_batch))
            continue
        request = (msg.user_id, msg.idempotency_key)
        if request in seen:
            result.decisions.append(Decision(record, seen[request], None, duplicate=True))
            continue
        status, reason = _judge(msg, items, remaining, held)
        if status == CONFIRMED:
            remaining[msg.item_id] -= msg.quantity
            pair = (msg.user_id, msg.item_id)
            held[pair] = held.get(pair, 0) + msg.quantity
            result.sold_by_item[msg.item_id] = (
                result.sold_by_item.get(msg.item_id, 0) + msg.quantity
            )
        seen[request] = status
        result.decisions.append(Decision(record, status, reason))
        decided_here.add(msg.purchase_id)
        rows[msg.purchase_id] = Target(
            msg.purchase_id, msg.user_id, msg.item_id, msg.quantity, status
        )
    return result


def _cancel(
    target: Target | None,
    items: dict[str, ItemState],
    remaining: dict[str, int],
    held: dict[tuple[str, str], int],
    result: BatchDecisions,
) -> Target | None:
    """The target if this cancel changes it: only a confirmed purchase is cancelled."""
    if target is None or target.status != CONFIRMED or target.item_id not in items:
        return None
    remaining[target.item_id] += target.quantity
    pair = (target.user_id, target.item_id)
    held[pair] = held.get(pair, 0) - target.quantity
    result.sold_by_item[target.item_id] = (
        result.sold_by_item.get(target.item_id, 0) - target.quantity
    )
    return target


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
