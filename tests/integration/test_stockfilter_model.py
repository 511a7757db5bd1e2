"""A stateful property test of the stock filter and the idempotency records, on the
real Redis, against a model.

Hypothesis reserves (purchase ids from a small pool, so retries happen, starting
at a chosen shard as the gateway does for a retry), settles (confirmed or
rejected, twice at times), rebuilds the filter (`set_remaining`) and claims and
swaps idempotency records. After every step: the shard levels and reservation
records are the model's, and units are conserved: in shards + reserved in
records + sold and settled == what was loaded.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from infra.embedded.redis import EmbeddedRedis
from services.stockfilter.client import close_redis, open_redis
from services.stockfilter.filter import Settlement, StockFilter
from services.stockfilter.idempotency import IdempotencyStore, new_claim
from tests.conftest import fresh_id

SHARDS = 3
PURCHASES = st.sampled_from([f"p{n}" for n in range(6)])


class FilterMachine(RuleBasedStateMachine):
    redis_url = ""
    settled = Bundle("settled")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = open_redis(self.redis_url, cluster=False)
        self.stock = StockFilter(self.client, SHARDS)
        self.idempotency = IdempotencyStore(self.client, ttl_s=60)
        self.item = fresh_id("model")
        self.levels = [0] * SHARDS
        self.records: dict[tuple[int, str], int] = {}
        self.sold = 0
        self.loaded = 0
        self.claims: dict[str, Any] = {}
        self.run(self.stock.set_remaining(self.item, 0))

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(close_redis(self.client))
        self.loop.close()

    @rule(units=st.integers(0, 12), per_request=st.integers(1, 3))
    def rebuild(self, units: int, per_request: int) -> None:
        """The reconciler's rebuild: remaining excludes units still in flight."""
        self.run(self.stock.set_remaining(self.item, units, per_request))
        levels = self.run(self.stock.shard_levels(self.item))
        assert sum(levels) == units and min(levels) >= 0
        self.levels = list(levels)
        self.loaded = units + sum(self.records.values()) + self.sold

    @rule(purchase=PURCHASES, quantity=st.integers(1, 3), first=st.integers(0, SHARDS - 1))
    def reserve(self, purchase: str, quantity: int, first: int) -> None:
        result = self.run(
            self.stock.reserve(self.item, purchase, quantity, lambda _: b"m", first=first)
        )
        assert result.shard == self._model_reserve(purchase, quantity, first)

    def _model_reserve(self, purchase: str, quantity: int, first: int) -> int | None:
        for step in range(SHARDS):
            shard = (first + step) % SHARDS
            if (shard, purchase) in self.records:
                return shard  # a retry on the same shard takes nothing more
            if self.levels[shard] >= quantity:
                self.levels[shard] -= quantity
                self.records[(shard, purchase)] = quantity
                return shard
        return None

    @rule(target=settled, data=st.data(), give_back=st.booleans())
    def settle(self, data: st.DataObject, give_back: bool) -> Settlement:
        if not self.records:
            return Settlement(self.item, 0, "never-reserved", 1, give_back)
        shard, purchase = data.draw(st.sampled_from(sorted(self.records)))
        quantity = self.records.pop((shard, purchase))
        settlement = Settlement(self.item, shard, purchase, quantity, give_back)
        returned = self.run(self.stock.settle([settlement]))
        assert returned == (quantity if give_back else 0)
        if give_back:
            self.levels[shard] += quantity
        else:
            self.sold += quantity
        return settlement

    @rule(settlement=settled)
    def settle_again(self, settlement: Settlement) -> None:
        """A final state published twice: the second settlement gives nothing back."""
        if (settlement.shard, settlement.purchase_id) in self.records:
            return  # reserved again since: not a repeat
        assert self.run(self.stock.settle([settlement])) == 0

    @rule(purchase=PURCHASES, quantity=st.integers(1, 3))
    def claim(self, purchase: str, quantity: int) -> None:
        record = new_claim("u", self.item, quantity)
        key = f"{self.item}-{purchase}"
        earlier = self.run(self.idempotency.claim(key, record))
        if key in self.claims:
            assert earlier == self.claims[key]
        else:
            assert earlier is None
            self.claims[key] = record

    @rule(purchase=PURCHASES, ours=st.booleans(), drop=st.booleans())
    def swap(self, purchase: str, ours: bool, drop: bool) -> None:
        key = f"{self.item}-{purchase}"
        current = self.claims.get(key)
        believed = current if ours and current is not None else new_claim("u", self.item, 1)
        new = None if drop else believed.published(1)
        done = self.run(self.idempotency.swap(key, believed, new))
        assert done == (current is not None and believed == current)
        if done:
            self.claims.pop(key) if new is None else self.claims.__setitem__(key, new)

    @invariant()
    def redis_is_the_model(self) -> None:
        assert self.run(self.stock.shard_levels(self.item)) == self.levels
        found = self.run(self.stock.reservations(self.item))
        assert {(s, p) for s, records in found.items() for p in records} == set(self.records)
        for key, record in self.claims.items():
            assert self.run(self.idempotency.get(key)) == record

    @invariant()
    def units_are_conserved(self) -> None:
        assert sum(self.levels) + sum(self.records.values()) + self.sold == self.loaded


def test_stock_filter_and_idempotency_records_follow_the_model(
    redis_server: EmbeddedRedis,
) -> None:
    FilterMachine.redis_url = redis_server.url
    run_state_machine_as_test(
        FilterMachine, settings=settings(max_examples=15, stateful_step_count=20, deadline=None)
    )
