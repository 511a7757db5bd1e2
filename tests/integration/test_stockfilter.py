"""The Redis stock filter's Lua scripts, on one node and on a Redis Cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from redis.exceptions import ResponseError

from infra.embedded.redis import EmbeddedRedis
from services.schema import PurchaseMessage
from services.stockfilter.activity import ActiveItems
from services.stockfilter.admit import ClaimAndReserve
from services.stockfilter.autopipe import AutoPipeline
from services.stockfilter.client import close_redis, open_redis
from services.stockfilter.filter import (
    ALREADY_RESERVED,
    NOT_ENOUGH,
    RESERVED,
    SHARD_MISSING,
    Settlement,
    StockFilter,
)
from services.stockfilter.idempotency import IdempotencyStore, new_claim
from services.stockfilter.keys import active_items_key, idempotency_key, stock_key
from tests.conftest import fresh_id

SHARDS = 4


@pytest.fixture(params=["node", "cluster"])
async def stock(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis
) -> AsyncIterator[StockFilter]:
    server = redis_server if request.param == "node" else request.getfixturevalue("redis_cluster")
    client = open_redis(server.url, cluster=request.param == "cluster")
    try:
        yield StockFilter(client, SHARDS)
    finally:
        await close_redis(client)


def message(item_id: str, purchase_id: str, shard: int) -> bytes:
    return PurchaseMessage(purchase_id, "u", "k", item_id, 1, shard, 0).encode()


async def test_reserves_exactly_the_stock_across_shards(stock: StockFilter) -> None:
    item_id = fresh_id()
    await stock.set_remaining(item_id, 10)
    assert sorted(await stock.shard_levels(item_id), reverse=True) == [3, 3, 2, 2]

    async def buy(n: int) -> int | None:
        pid = f"p{n}"
        result = await stock.reserve(item_id, pid, 1, lambda s: message(item_id, pid, s))
        return result.shard

    shards = await asyncio.gather(*(buy(n) for n in range(40)))
    assert sum(shard is not None for shard in shards) == 10
    assert await stock.shard_levels(item_id) == [0, 0, 0, 0]
    records = await stock.reservations(item_id)
    assert sum(len(r) for r in records.values()) == 10


async def test_settle_gives_back_rejected_units_once(stock: StockFilter) -> None:
    item_id = fresh_id()
    await stock.set_remaining(item_id, 1)
    reservation = await stock.reserve(item_id, "p1", 1, lambda s: message(item_id, "p1", s))
    assert reservation.shard is not None
    rejected = Settlement(item_id, reservation.shard, "p1", 1, give_back=True)
    assert await stock.settle([rejected]) == 1
    assert await stock.settle([rejected]) == 0  # the record is gone: nothing twice
    assert sum(level or 0 for level in await stock.shard_levels(item_id)) == 1


async def test_a_retry_on_the_same_shard_takes_no_second_unit(stock: StockFilter) -> None:
    item_id = fresh_id()
    await stock.set_remaining(item_id, 8)
    first = await stock.reserve(item_id, "p1", 1, lambda s: message(item_id, "p1", s), first=0)
    again = await stock.reserve(item_id, "p1", 1, lambda s: message(item_id, "p1", s), first=0)
    assert first.shard == again.shard == 0
    assert sum(level or 0 for level in await stock.shard_levels(item_id)) == 7


async def test_missing_filter_is_reported_not_taken_as_sold_out(stock: StockFilter) -> None:
    item_id = fresh_id()
    await stock.set_remaining(item_id, 4)
    await stock.redis.delete(*(stock_key(item_id, shard) for shard in range(SHARDS)))
    result = await stock.reserve(item_id, "p1", 1, lambda s: message(item_id, "p1", s))
    assert result.shard is None and result.missing


async def test_a_take_never_leaves_a_shard_below_zero(stock: StockFilter) -> None:
    """A drift repair takes what a snapshot saw; reserves may have taken part of it
    since: it takes what is left, and says how much, instead of leaving a debt."""
    item_id = fresh_id()
    await stock.set_remaining(item_id, 8)  # 2 per shard
    assert await stock.add_units(item_id, 0, -5) == -2
    assert await stock.add_units(item_id, 1, 3) == 3
    assert await stock.add_units(item_id, 2, -1) == -1
    assert await stock.shard_levels(item_id) == [0, 5, 1, 2]
    await stock.redis.delete(stock_key(item_id, 3))
    assert await stock.add_units(item_id, 3, 1) is None  # missing: the rebuild's
    assert not await stock.adjust(item_id, 3, 1)


async def test_counts_are_units_and_records_per_shard(stock: StockFilter) -> None:
    item_id = fresh_id()
    await stock.set_remaining(item_id, 8)
    for pid in ("p1", "p2"):
        await stock.reserve(item_id, pid, 1, lambda s, p=pid: message(item_id, p, s), first=1)
    await stock.redis.delete(stock_key(item_id, 3))
    counts = await stock.counts(item_id)
    assert [(c.units, c.records) for c in counts] == [(2, 0), (0, 2), (2, 0), (None, 0)]


async def test_idempotency_claim_is_won_once_and_swapped_only_by_its_owner(
    stock: StockFilter,
) -> None:
    store = IdempotencyStore(stock.redis, ttl_s=60)
    pid = fresh_id("p")
    mine = new_claim("alice", "sku", 1)
    theirs = new_claim("alice", "sku", 1)
    assert await store.claim(pid, mine) is None
    assert await store.claim(pid, theirs) == mine
    assert not await store.swap(pid, theirs, None)
    assert await store.swap(pid, mine, mine.published(2))
    stored = await store.get(pid)
    assert stored is not None and stored.state == "published" and stored.shard == 2


async def test_a_record_another_encoder_wrote_is_swapped_as_it_was_read(
    stock: StockFilter,
) -> None:
    """unclaim.lua compares bytes: a takeover of a claim written by json.dumps (an
    older gateway, non-ASCII escaped) must not depend on encoding it the same way."""
    store = IdempotencyStore(stock.redis, ttl_s=60)
    pid = fresh_id("p")
    fields = {"item_id": "sku", "nonce": "n1", "quantity": 1, "shard": 0}
    fields |= {"state": "claimed", "ts_ms": 1, "user_id": "Jos\u00e9"}
    await stock.redis.set(idempotency_key(pid), json.dumps(fields, separators=(",", ":")))
    stale = await store.get(pid)
    assert stale is not None and stale.user_id == "Jos\u00e9"
    renewed = stale.renewed()
    assert await store.swap(pid, stale, renewed)
    assert await store.get(pid) == renewed


async def test_claim_and_reserve_claims_once_and_reserves_only_with_the_claim(
    stock: StockFilter,
) -> None:
    """One Lua call on a node, two calls on a cluster: the same answers."""
    store = IdempotencyStore(stock.redis, ttl_s=60, pipe=stock.pipe)
    admit = ClaimAndReserve(store, stock)
    item_id = fresh_id()
    await stock.set_remaining(item_id, 8)  # 2 units in each shard
    pid = fresh_id("p")
    mine = new_claim("alice", item_id, 2, 1)
    first = await admit(pid, mine, message(item_id, pid, 1))
    assert (first.earlier, first.code, first.left) == (None, RESERVED, 0)
    assert (await stock.reservations(item_id))[1] == {pid: message(item_id, pid, 1)}
    # A retry finds the claim and takes nothing more.
    again = await admit(pid, new_claim("alice", item_id, 2, 1), message(item_id, pid, 1))
    assert again.earlier == mine
    assert await stock.shard_levels(item_id) == [2, 0, 2, 2]
    # A new claim on a shard too poor (or already holding its record) is still a claim.
    other = fresh_id("p")
    poor = await admit(other, new_claim("bob", item_id, 1, 1), message(item_id, other, 1))
    assert (poor.earlier, poor.code, poor.left) == (None, NOT_ENOUGH, 0)
    assert await store.get(other) is not None
    await store.redis.delete(idempotency_key(pid))  # Redis forgot the claim
    twice = await admit(pid, mine, message(item_id, pid, 1))
    assert (twice.earlier, twice.code) == (None, ALREADY_RESERVED)
    await stock.redis.delete(stock_key(item_id, 3))
    lost = fresh_id("p")
    missing = await admit(lost, new_claim("carol", item_id, 1, 3), message(item_id, lost, 3))
    assert (missing.earlier, missing.code) == (None, SHARD_MISSING)


async def test_auto_pipeline_gives_each_caller_its_own_answer(redis_server: EmbeddedRedis) -> None:
    client = open_redis(redis_server.url, cluster=False)
    try:
        prefix = fresh_id("pipe")
        for n in range(50):
            await client.set(f"{prefix}:{n}", n)
        await client.hset(f"{prefix}:hash", "f", "v")
        pipe = AutoPipeline(client)
        results = await asyncio.gather(
            *(pipe.get(f"{prefix}:{n}") for n in range(50)),
            pipe.get(f"{prefix}:hash"),  # WRONGTYPE: fails alone
            return_exceptions=True,
        )
        assert [int(r) for r in results[:50]] == list(range(50))  # type: ignore[arg-type]
        assert isinstance(results[50], ResponseError)
    finally:
        await close_redis(client)


async def test_auto_pipeline_loads_scripts_redis_forgot(redis_server: EmbeddedRedis) -> None:
    """Scripts go as bare EVALSHA (no SCRIPT EXISTS round trip per flush); after
    Redis forgot them, the callers that met NOSCRIPT are sent again, once loaded."""
    client = open_redis(redis_server.url, cluster=False)
    try:
        key = fresh_id("scripted")
        echo = client.register_script("return ARGV[1] .. redis.call('INCR', KEYS[1])")
        pipe = AutoPipeline(client)
        await client.script_flush()
        first = await asyncio.gather(*(pipe.script(echo, [key], [f"a{n}-"]) for n in range(20)))
        await client.script_flush()
        second = await asyncio.gather(
            pipe.script(echo, [key], ["b-"]), pipe.get(key), return_exceptions=True
        )
        # Each script ran exactly once: the INCR count has no gaps and no repeats.
        counts = sorted(int(r.decode().split("-")[1]) for r in first)
        assert counts == list(range(1, 21))
        assert second[0] == b"b-21"
        assert int(second[1]) in (20, 21)  # type: ignore[arg-type]
    finally:
        await close_redis(client)


async def test_concurrent_marks_of_an_item_send_one_and_all_wait_for_it(
    redis_server: EmbeddedRedis,
) -> None:
    client = open_redis(redis_server.url, cluster=False)
    sent: list[Sequence[Any]] = []

    class CountingPipe(AutoPipeline):
        async def script(
            self, script: Any, keys: Sequence[str], args: Sequence[Any], idempotent: bool = False
        ) -> Any:
            sent.append(args)
            return await super().script(script, keys, args, idempotent)

    try:
        activity = ActiveItems(client, CountingPipe(client))
        item_id = fresh_id("marked")
        await asyncio.gather(*(activity.mark(item_id) for _ in range(100)))
        assert len(sent) == 1
        # Every caller returned after the mark landed: the item is in the set.
        assert await client.zscore(active_items_key(), item_id) is not None
        await activity.mark(item_id, force=True)
        assert len(sent) == 2
    finally:
        await close_redis(client)
