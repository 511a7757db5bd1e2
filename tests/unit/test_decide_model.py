"""A stateful property test of the batch decision against a small model of one item.

Hypothesis sends purchases (users and keys from small pools, so duplicates and
per-user limits happen, also inside one batch), applies batches in a shuffled
order, and raises or lowers the stock between batches (never below sold). The
model is a plain walk in offset order; the invariants are design.md's: no
oversell, no double apply, per-user limits, first come first served.
"""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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

ITEM = "sku"
OTHER = "no-such-item"
USERS = st.sampled_from(["ann", "bob", "cy"])
KEYS = st.sampled_from(["k1", "k2", "k3", "k4"])


class OneItem(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.stock = 0
        self.sold = 0
        self.limit = 1
        self.offset = 0
        self.batch: list[Record] = []
        # what the store (decide's results) holds
        self.final: dict[tuple[str, str], tuple[str, int]] = {}
        self.held: dict[tuple[str, str], int] = {}
        # what the model expects
        self.model_final: dict[tuple[str, str], str] = {}

    @rule(stock=st.integers(0, 8), limit=st.integers(1, 3))
    @precondition(lambda self: self.offset == 0)
    def open_sale(self, stock: int, limit: int) -> None:
        self.stock, self.limit = stock, limit

    @rule(user=USERS, key=KEYS, quantity=st.integers(1, 3), unknown=st.booleans())
    def send(self, user: str, key: str, quantity: int, unknown: bool) -> None:
        item = OTHER if unknown and self.offset % 5 == 4 else ITEM
        message = PurchaseMessage(f"p-{user}-{key}", user, key, item, quantity, 0, 0)
        self.batch.append(Record(self.offset, message))
        self.offset += 1

    @rule(step=st.integers(-4, 4))
    def admin_write(self, step: int) -> None:
        self.stock = max(self.sold, self.stock + step)  # below sold is answered 409

    @rule(seed=st.integers(0, 2**16))
    @precondition(lambda self: bool(self.batch))
    def apply_batch(self, seed: int) -> None:
        records = list(self.batch)
        random.Random(seed).shuffle(records)
        known = {pair: status for pair, (status, _) in self.final.items()}
        state = {ITEM: ItemState(self.stock, self.sold, self.limit)}
        result = decide(records, state, known, self.held)
        assert [d.record.offset for d in result.decisions] == sorted(r.offset for r in records)
        expected = self._model_walk(sorted(records, key=lambda r: r.offset))
        assert [(d.status, d.reason, d.duplicate) for d in result.decisions] == expected
        self._check_first_come_first_served(result.decisions)
        for decision in result.new:
            msg = decision.record.message
            self.final[(msg.user_id, msg.idempotency_key)] = (decision.status, msg.quantity)
            if decision.status == CONFIRMED:
                pair = (msg.user_id, msg.item_id)
                self.held[pair] = self.held.get(pair, 0) + msg.quantity
        self.sold += result.sold_by_item.get(ITEM, 0)
        self.batch.clear()

    def _model_walk(self, records: list[Record]) -> list[tuple[str, str | None, bool]]:
        remaining = self.stock - self.sold
        held = {user: units for (user, item), units in self.held.items() if item == ITEM}
        out: list[tuple[str, str | None, bool]] = []
        for record in records:
            msg = record.message
            pair = (msg.user_id, msg.idempotency_key)
            if pair in self.model_final:
                out.append((self.model_final[pair], None, True))
                continue
            if msg.item_id != ITEM:
                status, reason = REJECTED, UNKNOWN_ITEM
            elif held.get(msg.user_id, 0) + msg.quantity > self.limit:
                status, reason = REJECTED, PER_USER_LIMIT
            elif remaining < msg.quantity:
                status, reason = REJECTED, SOLD_OUT
            else:
                status, reason = CONFIRMED, None
                remaining -= msg.quantity
                held[msg.user_id] = held.get(msg.user_id, 0) + msg.quantity
            self.model_final[pair] = status
            out.append((status, reason, False))
        return out

    @staticmethod
    def _check_first_come_first_served(decisions: list) -> None:  # type: ignore[type-arg]
        smallest_refused: int | None = None
        for decision in decisions:
            if decision.duplicate or decision.record.message.item_id != ITEM:
                continue
            quantity = decision.record.message.quantity
            if decision.reason == SOLD_OUT:
                smallest_refused = min(quantity, smallest_refused or quantity)
            elif decision.status == CONFIRMED and smallest_refused is not None:
                assert quantity < smallest_refused, "a later purchase took units refused earlier"

    @invariant()
    def no_oversell(self) -> None:
        assert 0 <= self.sold <= self.stock

    @invariant()
    def sold_is_what_is_confirmed(self) -> None:
        confirmed = sum(q for (status, q) in self.final.values() if status == CONFIRMED)
        assert confirmed == self.sold

    @invariant()
    def per_user_limit_holds(self) -> None:
        assert all(units <= self.limit for units in self.held.values())

    @invariant()
    def one_final_state_per_request(self) -> None:
        assert self.final.keys() == self.model_final.keys()
        assert all(self.final[pair][0] == self.model_final[pair] for pair in self.final)


OneItem.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestOneItem = OneItem.TestCase
