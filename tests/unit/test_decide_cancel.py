"""Cancels are decided in offset order with the purchases of their batch."""

from __future__ import annotations

from services.schema import PurchaseMessage
from services.store.decide import (
    CONFIRMED,
    PER_USER_LIMIT,
    REJECTED,
    SOLD_OUT,
    ItemState,
    Record,
    Target,
    decide,
)


def buy(offset: int, user: str, item: str = "sku", quantity: int = 1) -> Record:
    return Record(offset, PurchaseMessage(f"p-{user}", user, f"k-{user}", item, quantity, 0, 0))


def cancel(offset: int, user: str, item: str = "sku", quantity: int = 1) -> Record:
    return Record(offset, PurchaseMessage.cancel(f"p-{user}", user, item, quantity, 0))


def confirmed_row(user: str, item: str = "sku", quantity: int = 1) -> Target:
    return Target(f"p-{user}", user, item, quantity, CONFIRMED)


def test_a_cancel_frees_its_units_for_a_later_purchase_in_the_same_batch() -> None:
    targets = {"p-a": confirmed_row("a")}
    result = decide(
        [buy(3, "b"), cancel(1, "a"), buy(2, "c")],
        {"sku": ItemState(1, 1, 1)},
        {},
        {("a", "sku"): 1},
        targets,
    )
    assert [(d.record.offset, d.status) for d in result.decisions] == [
        (2, CONFIRMED),
        (3, REJECTED),
    ]
    assert result.decisions[1].reason == SOLD_OUT
    assert result.applied_cancellations == [targets["p-a"]]
    assert result.cancelled_in_db == [targets["p-a"]]
    assert result.sold_by_item == {"sku": 0}


def test_a_purchase_before_the_cancel_does_not_get_its_units() -> None:
    result = decide(
        [buy(1, "b"), cancel(2, "a")],
        {"sku": ItemState(1, 1, 1)},
        {},
        {},
        {"p-a": confirmed_row("a")},
    )
    assert [d.status for d in result.decisions] == [REJECTED]
    assert len(result.applied_cancellations) == 1


def test_a_cancel_of_a_purchase_that_is_not_confirmed_is_a_no_op() -> None:
    rejected = Target("p-a", "a", "sku", 1, REJECTED)
    for targets in ({"p-a": rejected}, {}):
        result = decide([cancel(1, "a"), buy(2, "b")], {"sku": ItemState(1, 1, 1)}, {}, {}, targets)
        assert result.applied_cancellations == []
        assert [d.status for d in result.decisions] == [REJECTED]
        assert result.notified_ids == ["p-b", "p-a"]


def test_a_cancel_twice_is_applied_once() -> None:
    result = decide(
        [cancel(1, "a"), cancel(2, "a"), buy(3, "b"), buy(4, "c")],
        {"sku": ItemState(2, 2, 1)},
        {},
        {("a", "sku"): 1},
        {"p-a": confirmed_row("a")},
    )
    assert len(result.applied_cancellations) == 1
    assert [d.status for d in result.decisions] == [CONFIRMED, REJECTED]


def test_a_cancel_frees_the_owners_per_user_quota() -> None:
    result = decide(
        [
            buy(1, "a"),
            cancel(2, "a"),
            Record(3, PurchaseMessage("p-a2", "a", "k2", "sku", 1, 0, 0)),
        ],
        {"sku": ItemState(5, 0, 1)},
        {},
        {},
        {},
    )
    assert [d.status for d in result.decisions] == [CONFIRMED, CONFIRMED]
    # Confirmed and cancelled in one batch: written as cancelled, never counted as sold.
    assert result.cancelled_in_batch == {"p-a"}
    assert result.cancelled_in_db == []
    assert result.sold_by_item == {"sku": 1}


def test_without_a_cancel_the_quota_still_holds() -> None:
    result = decide(
        [buy(1, "a"), Record(3, PurchaseMessage("p-a2", "a", "k2", "sku", 1, 0, 0))],
        {"sku": ItemState(5, 0, 1)},
        {},
        {},
    )
    assert [d.reason for d in result.decisions] == [None, PER_USER_LIMIT]


def test_a_cancel_is_no_request_for_duplicate_detection() -> None:
    # Cancels carry an empty idempotency key: two of them never look like one request.
    result = decide(
        [cancel(1, "a"), cancel(2, "b")],
        {"sku": ItemState(2, 2, 1)},
        {("a", ""): CONFIRMED},
        {},
        {"p-a": confirmed_row("a"), "p-b": confirmed_row("b")},
    )
    assert len(result.applied_cancellations) == 2
    assert result.decisions == []


def test_cancel_messages_round_trip_and_old_messages_are_purchases() -> None:
    message = PurchaseMessage.cancel("p_1", "u", "sku", 2, 5)
    assert PurchaseMessage.decode(message.encode()) == message and message.is_cancel
    old = b'{"purchase_id":"p","user_id":"u","idempotency_key":"k","item_id":"i",'
    old += b'"quantity":1,"shard":0,"admitted_at_ms":0}'
    assert not PurchaseMessage.decode(old).is_cancel
    assert b"kind" not in PurchaseMessage("p", "u", "k", "i", 1, 0, 0).encode()
