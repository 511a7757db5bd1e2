"""Pure decision logic for one batch: which purchases confirm, in offset order."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.schema import PurchaseMessage

CONFIRMED = "confirmed"
REJECTED = "rejected"
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


@dataclass
class BatchDecisions:
    decisions: list[Decision] = field(default_factory=list)
    sold_by_item: dict[str, int] = field(default_factory=dict)

    @property
    def new(self) -> list[Decision]:
        return [d for d in self.decisions if not d.duplicate]


def decide(
    records: list[Record],
    items: dict[str, ItemState],
    known: dict[tuple[str, str], str],
    held: dict[tuple[str, str], int],
) -> BatchDecisions:
    """Walk records in offset order: first come, first served (invariant 6).

    `known` maps requests (user, idempotency key) that already have a final
    state to it; `held` maps (user, item) to the units the user already holds.
    """
    result = BatchDecisions()
    seen = dict(known)
    remaining = {item_id: s.stock - s.sold for item_id, s in items.items()}
    held = dict(held)
    for record in sorted(records, key=lambda r: r.offset):
        msg = record.message
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
    return result


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
