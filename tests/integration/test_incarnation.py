"""The parts that let a gateway know whether Redis forgot (issue 23, item 3):
incarnation markers on one node, on a failover to a replica and on a cluster,
the published record written again mid-admission, and fences passed in Postgres."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from infra.embedded.redis import EmbeddedRedis, RedisNode
from services.resources import CoreResources
from services.schema import PurchaseMessage
from services.stockfilter.client import RedisClient, close_redis, open_redis
from services.stockfilter.idempotency import REWRITTEN, IdempotencyStore, new_claim
from services.stockfilter.incarnation import Incarnations
from services.stockfilter.keys import idempotency_key
from services.store.batch import Lease, apply_batch
from services.store.decide import Record
from services.store.fences import fence_verdict
from services.store.items import upsert_item
from services.store.leases import acquire_lease
from tests.conftest import fresh_id, wait_for

TTL_S = 600


def pid() -> str:
    return "p_" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def own_redis(state_root: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this module's own: the tests here empty it."""
    server = EmbeddedRedis(state_root / f"redis-incarnation-{secrets.token_hex(2)}")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_client(own_redis: EmbeddedRedis) -> AsyncIterator[RedisClient]:
    client = open_redis(own_redis.url, cluster=False)
    yield client
    await close_redis(client)


def incarnations(client: RedisClient, cluster: bool = False) -> Incarnations:
    return Incarnations(client, IdempotencyStore(client, TTL_S), cluster=cluster)


async def test_the_marker_stays_until_redis_loses_its_data(
    own_redis: EmbeddedRedis, redis_client: RedisClient
) -> None:
    watch = incarnations(redis_client)
    first = await watch.lookup(pid())
    again = await watch.lookup(pid())
    assert again.incarnation == first.incarnation and not again.new
    await redis_client.flushall()
    flushed = await watch.lookup(pid())
    assert flushed.new and flushed.incarnation != first.incarnation
    own_redis.restart()
    restarted = await watch.lookup(pid())
    assert restarted.new and restarted.incarnation != flushed.incarnation


async def test_a_restart_from_a_snapshot_is_a_new_incarnation(state_root: Path) -> None:
    """Persistence that lags (an RDB snapshot, appendfsync everysec) brings the marker
    back after a restart, but not the last writes: another process, another marker."""
    node = RedisNode(state_root / f"redis-snapshot-{secrets.token_hex(2)}")
    node.start()
    url = f"redis://127.0.0.1:{node.port}/0"
    client = open_redis(url, cluster=False)
    try:
        seen = await incarnations(client).lookup(pid())
        await client.save()  # the snapshot holds the marker, not what comes after
        node.kill()
        node.start()  # loads the snapshot: the marker is back
        assert await client.get("fs:incarnation") is not None
        again = await incarnations(client).lookup(pid())
        assert again.new and again.incarnation != seen.incarnation
    finally:
        await close_redis(client)
        node.stop()


async def test_an_eviction_is_a_new_incarnation(redis_client: RedisClient) -> None:
    """maxmemory with an eviction policy may drop a record and keep the marker (it
    has no TTL, so volatile-lru never picks it)."""
    watch = incarnations(redis_client)
    seen = await watch.lookup(pid())
    used = int((await redis_client.info("memory"))["used_memory"])
    await redis_client.config_set("maxmemory-policy", "volatile-lru")
    await redis_client.config_set("maxmemory", str(used + 512 * 1024))
    try:
        for batch in range(200):
            async with redis_client.pipeline(transaction=False) as pipe:
                for n in range(50):
                    pipe.set(f"filler:{batch}:{n}", "x" * 1024, ex=600)
                await pipe.execute()
            if int((await redis_client.info("stats"))["evicted_keys"]) > 0:
                break
    finally:
        await redis_client.config_set("maxmemory", "0")
        await redis_client.config_set("maxmemory-policy", "noeviction")
    assert await redis_client.get("fs:incarnation") is not None
    evicted = await watch.lookup(pid())
    assert evicted.new and evicted.incarnation != seen.incarnation


async def test_a_record_is_read_with_its_marker(redis_client: RedisClient) -> None:
    store = IdempotencyStore(redis_client, TTL_S)
    purchase_id = pid()
    claim = new_claim("u", "sku", 1, 0)
    assert await store.claim(purchase_id, claim) is None
    sighting = await incarnations(redis_client).lookup(purchase_id)
    assert sighting.record == claim


async def test_a_published_mark_writes_again_a_claim_redis_lost(
    redis_client: RedisClient,
) -> None:
    """Mid-admission: the claim took the units, Redis lost it, the message went to
    Kafka. Marking it published must leave a record a later GET finds."""
    store = IdempotencyStore(redis_client, TTL_S)
    purchase_id = pid()
    claim = new_claim("u", "sku", 1, 0)
    assert await store.claim(purchase_id, claim) is None
    await redis_client.delete(idempotency_key(purchase_id))  # what a FLUSHALL does to it
    assert await store.mark_published(purchase_id, claim, claim.published(0)) == REWRITTEN
    found = await store.get(purchase_id)
    assert found is not None and found.state == "published"
    # A claim another request took over is still not ours to overwrite.
    taken = claim.renewed()
    await redis_client.set(idempotency_key(purchase_id), taken.encode())
    assert await store.mark_published(purchase_id, claim, claim.published(0)) == 0
    assert await store.get(purchase_id) == taken


async def test_a_promoted_replica_is_a_new_incarnation(state_root: Path) -> None:
    """Failover to a replica: it holds the old marker, but maybe not the last writes.
    Its new replication id makes the marker stale."""
    root = state_root / f"redis-failover-{secrets.token_hex(2)}"
    master, replica = RedisNode(root), RedisNode(root)
    master.start()
    replica.start()
    clients = [open_redis(f"redis://127.0.0.1:{n.port}/0", False) for n in (master, replica)]
    try:
        on_master, on_replica = clients
        seen = await incarnations(on_master).lookup(pid())
        await on_replica.replicaof("127.0.0.1", master.port)

        async def replicated() -> bool:
            return await on_replica.get("fs:incarnation") is not None

        await wait_for(replicated, timeout_s=20)
        await on_replica.replicaof("NO", "ONE")
        promoted = await incarnations(on_replica).lookup(pid())
        assert promoted.new and promoted.incarnation != seen.incarnation
        assert not (await incarnations(on_replica).lookup(pid())).new
    finally:
        for client in clients:
            await close_redis(client)
        master.stop()
        replica.stop()


async def test_a_cluster_keeps_a_marker_per_slot(redis_cluster: EmbeddedRedis) -> None:
    client = open_redis(redis_cluster.url, cluster=True)
    try:
        assert isinstance(client, RedisCluster)
        watch = incarnations(client, cluster=True)
        purchase_id = pid()
        first = await watch.lookup(purchase_id)
        assert not (await watch.lookup(purchase_id)).new
        marker = watch.marker_key(idempotency_key(purchase_id))
        assert client.keyslot(marker) == client.keyslot(idempotency_key(purchase_id))
        await client.delete(marker)  # what losing the slot's node does to it
        lost = await watch.lookup(purchase_id)
        assert lost.new and lost.incarnation != first.incarnation
    finally:
        await close_redis(client)


def _fence(token: str, offset: int) -> Record:
    return Record(offset, PurchaseMessage.fence(token, 0))


async def test_a_fence_passes_with_the_purchases_before_it(core: CoreResources) -> None:
    item_id, topic, token = fresh_id(), fresh_id("topic"), secrets.token_hex(8)
    await upsert_item(core.pool, item_id, 10, 1)
    grant = await acquire_lease(core.pool, topic, 0, "test")
    lease = Lease(topic, 0, grant.epoch)
    bought = PurchaseMessage(pid(), "u", "k", item_id, 1, 0, 0)
    async with core.pool.acquire() as conn:
        assert (await fence_verdict(core.pool, token, topic, bought.purchase_id)).passed == set()
        result = await apply_batch(conn, lease, [Record(0, bought), _fence(token, 1)])
        assert result.next_offset == 2
        verdict = await fence_verdict(core.pool, token, topic, bought.purchase_id)
        assert verdict.passed == {0} and verdict.known
        # A batch of fences alone moves the offset on too (a quiet partition).
        alone = await apply_batch(conn, lease, [_fence(secrets.token_hex(8), 2)])
        assert alone.next_offset == 3
        again = await apply_batch(conn, lease, [_fence(token, 3)])  # a resent copy
        assert again.next_offset == 4
    assert (await fence_verdict(core.pool, token, topic, pid())).passed == {0}


def test_a_fence_message_round_trips() -> None:
    fence = PurchaseMessage.fence("abc", 5)
    assert PurchaseMessage.decode(fence.encode()) == fence and fence.kind == "fence"
