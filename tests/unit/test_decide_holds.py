"""Pays and expiries are decided in offset order by the database's clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.schema import PurchaseMessage
from services.store.decide import (
    CANCELLED,
    CONFIRMED,
    EXPIRED,
    PAID,
    ItemState,
    Record,
    Target,
    decide,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HOLD = ItemState(1, 1, 1, hold_s=60)


def on_hold(pay_by: datetime | None) -> Target:
    return Target("p-a", "a", "sku", 1, CONFIRMED, pay_by)


def pay(offset: int) -> Record:
    return Record(offset, PurchaseMessage.pay("p-a", "a", "sku", 1, 0))


def cancel(offset: int) -> Record:
    return Record(offset, PurchaseMessage.cancel("p-a", "a", "sku", 1, 0))


def buy(offset: int, user: str) -> Record:
    return Record(offset, PurchaseMessage(f"p-{user}", user, "k", "sku", 1, 0, 0))


def test_a_pay_up_to_pay_by_pays_and_keeps_the_unit_sold() -> None:
    for pay_by in (NOW, NOW + timedelta(seconds=1)):
        result = decide([pay(1), buy(2, "b")], {"sku": HOLD}, {}, {}, {"p-a": on_hold(pay_by)}, NOW)
        assert result.in_db(PAID) == [on_hold(pay_by)] and result.returned == []
        assert [d.status for d in result.decisions] == ["rejected"]


def test_a_pay_after_pay_by_expires_and_frees_the_unit() -> None:
    late = on_hold(NOW - timedelta(microseconds=1))
    result = decide([pay(1), buy(2, "b")], {"sku": HOLD}, {}, {("a", "sku"): 1}, {"p-a": late}, NOW)
    assert result.in_db(EXPIRED) == [late] and result.in_db(PAID) == []
    assert [d.status for d in result.decisions] == [CONFIRMED]
    assert result.sold_by_item == {"sku": 0}


def test_a_cancel_after_pay_by_expires_too() -> None:
    late = on_hold(NOW - timedelta(seconds=5))
    result = decide([cancel(1)], {"sku": HOLD}, {}, {}, {"p-a": late}, NOW)
    assert result.in_db(EXPIRED) == [late] and result.in_db(CANCELLED) == []


def test_a_pay_of_a_purchase_without_hold_changes_nothing() -> None:
    result = decide([pay(1)], {"sku": HOLD}, {}, {}, {"p-a": on_hold(None)}, NOW)
    assert result.applied(PAID, EXPIRED) == [] and result.notified_ids == ["p-a"]


def test_a_paid_purchase_is_paid_once_and_never_cancelled() -> None:
    result = decide([pay(1), pay(2), cancel(3)], {"sku": HOLD}, {}, {}, {"p-a": on_hold(NOW)}, NOW)
    assert [c.status for c in result.changes if c.target] == [PAID]


def test_a_confirmation_on_hold_carries_pay_by_and_paid_in_its_batch_is_inserted_paid() -> None:
    result = decide([buy(1, "a"), pay(2)], {"sku": ItemState(1, 0, 1, 30)}, {}, {}, {}, NOW)
    assert result.decisions[0].pay_by == NOW + timedelta(seconds=30)
    assert result.final_in_batch == {"p-a": PAID}
    assert result.sold_by_item == {"sku": 1}


def test_pay_messages_round_trip() -> None:
    message = PurchaseMessage.pay("p_1", "u", "sku", 2, 5)
    assert PurchaseMessage.decode(message.encode()) == message and message.kind == "pay"
