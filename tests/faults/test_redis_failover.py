"""The Redis faults of the aimed nemesis, on a Redis of their own: a failover
really loses what the old master acknowledged after the replica's link was cut,
and FLUSHALL really empties a running node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from infra.embedded.proc import pid_alive
from infra.embedded.redis import EmbeddedRedis
from infra.embedded.redisfailover import RedisFailover, replication


async def test_failover_loses_the_writes_the_replica_never_got(state_root: Path) -> None:
    server = EmbeddedRedis(state_root / "redis-failover")
    server.start()
    failover = RedisFailover(server)
    try:
        port, old_pid = server.nodes[0].port, server.pids[0]
        async with aioredis.Redis.from_url(server.url) as client:
            await client.set("copied", "before the cut")
            await asyncio.to_thread(failover.cut)
            assert await client.set("lost", "acknowledged by the old master")
            assert await client.get("lost") == b"acknowledged by the old master"
            replica = failover.replica
            assert replica is not None and replica.pid is not None
            replica_pid = replica.pid
            await asyncio.to_thread(failover.switch)
        assert server.nodes[0].port == port and server.pids[0] != old_pid
        assert not pid_alive(old_pid) and not pid_alive(replica_pid)
        assert replication(port)["role"] == "master"
        async with aioredis.Redis.from_url(server.url) as client:
            assert await client.get("copied") == b"before the cut"
            assert await client.get("lost") is None
            assert await client.set("after", "writable")
    finally:
        failover.abandon()
        server.stop()


async def test_flush_empties_the_running_node(state_root: Path) -> None:
    server = EmbeddedRedis(state_root / "redis-flush")
    server.start()
    try:
        pid = server.pids[0]
        async with aioredis.Redis.from_url(server.url) as client:
            await client.set("k", "v")
            await asyncio.to_thread(server.flush)
            assert await client.get("k") is None
        assert server.pids == [pid]
    finally:
        server.stop()


async def test_a_failover_abandoned_after_the_cut_leaves_the_master_alone(
    state_root: Path,
) -> None:
    server = EmbeddedRedis(state_root / "redis-abandon")
    server.start()
    failover = RedisFailover(server)
    try:
        pid = server.pids[0]
        await asyncio.to_thread(failover.cut)
        replica = failover.replica
        assert replica is not None and replica.pid is not None
        replica_pid = replica.pid
        failover.abandon()
        assert not failover.cut_off and not pid_alive(replica_pid)
        assert server.pids == [pid]
        async with aioredis.Redis.from_url(server.url) as client:
            assert await client.set("k", "still the master")
    finally:
        failover.abandon()
        server.stop()
