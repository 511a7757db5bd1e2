"""The batch decision is pure: first come first served, stock and per-user limits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.schema import PurchaseMessage
from services.store.decide import (
    CONFIRMED,
    PER_USER_LIMIT,
    REJECTED,
    SOLD_OUT,
    UNKNOWN_ITEM,
    ItemState,
    Record,
    decide,
)


def record(offset: int, user: str = "u", item: str = "sku", quantity: int = 1) -> Record:
    pid = f"p-{offset}-{user}"
    return Record(offset, PurchaseMessage(pid, user, f"k{offset}", item, quantity, 0, 0))


def test_confirms_in_offset_order_until_stock_runs_out() -> None:
    records = [record(o, user=f"u{o}") for o in (5, 3, 4, 1, 2)]
    result = decide(records, {"sku": ItemState(3, 0, 1)}, {}, {})
    by_offset = {d.record.offset: d.status for d in result.decisions}
    assert by_offset == {1: CONFIRMED, 2: CONFIRMED, 3: CONFIRMED, 4: REJECTED, 5: REJECTED}
    assert result.sold_by_item == {"sku": 3}
    assert {d.reason for d in result.decisions if d.status == REJECTED} == {SOLD_OUT}


def test_per_user_limit_counts_units_already_held() -> None:
    records = [record(1, user="alice"), record(2, user="bob")]
    result = decide(records, {"sku": ItemState(10, 1, 1)}, {}, {("alice", "sku"): 1})
    assert [(d.status, d.reason) for d in result.decisions] == [
        (REJECTED, PER_USER_LIMIT),
        (CONFIRMED, None),
    ]


def test_a_known_purchase_is_a_duplicate_and_writes_nothing() -> None:
    first = record(1)
    again = Record(7, first.message)
    result = decide([first, again], {"sku": ItemState(10, 0, 5)}, {}, {})
    assert [d.duplicate for d in result.decisions] == [False, True]
    assert result.sold_by_item == {"sku": 1}
    request = (first.message.user_id, first.message.idempotency_key)
    known = decide([again], {"sku": ItemState(10, 1, 5)}, {request: CONFIRMED}, {})
    assert known.new == [] and known.sold_by_item == {}


def test_unknown_item_is_rejected() -> None:
    result = decide([record(1, item="nope")], {}, {}, {})
    assert result.decisions[0].reason == UNKNOWN_ITEM


@given(
    stock=st.integers(0, 20),
    sold=st.integers(0, 20),
    limit=st.integers(1, 3),
    orders=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 3)), max_size=40),
)
def test_never_oversells_nor_exceeds_the_per_user_limit(
    stock: int, sold: int, limit: int, orders: list[tuple[int, int]]
) -> None:
    sold = min(sold, stock)
    records = [record(i, user=f"u{u}", quantity=q) for i, (u, q) in enumerate(orders)]
    result = decide(records, {"sku": ItemState(stock, sold, limit)}, {}, {})
    confirmed = [d for d in result.decisions if d.status == CONFIRMED]
    assert sold + sum(d.record.message.quantity for d in confirmed) <= stock
    per_user: dict[str, int] = {}
    for d in confirmed:
        per_user[d.record.message.user_id] = per_user.get(d.record.message.user_id, 0) + (
            d.record.message.quantity
        )
    assert all(units <= limit for units in per_user.values())
    # First come, first served: nothing confirmed after a sold-out of the same or larger size.
    for d in result.decisions:
        if d.reason == SOLD_OUT:
            later = [c for c in confirmed if c.record.offset > d.record.offset]
            assert all(c.record.message.quantity < d.record.message.quantity for c in later)
