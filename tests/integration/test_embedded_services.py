"""Each embedded service starts, answers, restarts on the same port, and stops."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.embedded.broker import EmbeddedBroker
from infra.embedded.postgres import EmbeddedPostgres
from infra.embedded.proc import pid_alive, port_answers, require_binary
from infra.embedded.redis import EmbeddedRedis, RedisNode
from services.errors import ServiceStartError


async def test_postgres_starts_restarts_on_same_port_keeps_data_and_stops(state_root: Path) -> None:
    server = EmbeddedPostgres(state_root / "pg-lifecycle", fsync=False)
    server.start()
    try:
        port = server.port
        conn = await asyncpg.connect(server.url)
        await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        await conn.close()
        server.restart()
        assert server.port == port
        conn = await asyncpg.connect(server.url)
        assert await conn.fetchval("SELECT n FROM kept") == 42
        await conn.close()
    finally:
        server.stop()
    assert not port_answers(port)
    assert server.pid() is None


async def test_redis_node_restarts_empty_on_same_port(state_root: Path) -> None:
    server = EmbeddedRedis(state_root / "redis-lifecycle")
    server.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.set("k", "v")
        port, old_pid = server.nodes[0].port, server.pids[0]
        server.restart()
        assert server.nodes[0].port == port and server.pids[0] != old_pid
        assert not pid_alive(old_pid)
        await client.aclose()
        client = aioredis.Redis.from_url(server.url)
        assert await client.get("k") is None  # a restart loses everything, like a crash
    finally:
        await client.aclose()
        server.stop()
    assert not port_answers(port)


async def test_redis_cluster_runs_lua_on_a_hash_tag_and_restarts(state_root: Path) -> None:
    cluster = EmbeddedRedis(state_root / "cluster-lifecycle", cluster=True)
    cluster.start()
    try:
        assert len(cluster.pids) == 3
        ports = [node.port for node in cluster.nodes]
        cluster.restart()
        assert [node.port for node in cluster.nodes] == ports
        assert cluster.running()
    finally:
        cluster.stop()
    assert not any(port_answers(port) for port in ports)


async def test_broker_restart_loses_topics(state_root: Path) -> None:
    broker = EmbeddedBroker(state_root / "kafka-lifecycle")
    broker.start()
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("t1", num_partitions=2, replication_factor=1)])
        assert "t1" in await admin.list_topics()
        await admin.close()
        port = broker.port
        broker.restart()
        assert broker.port == port
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        assert "t1" not in await admin.list_topics()
        await admin.close()
    finally:
        broker.stop()
    assert not port_answers(port)


def test_missing_binary_is_named() -> None:
    with pytest.raises(ServiceStartError, match="missing binary /nope/redis-server"):
        require_binary("/nope/redis-server", "install it")


def test_busy_port_fails_with_the_service_log(state_root: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        node = RedisNode(state_root / "redis-busy", port=port)
        with pytest.raises(ServiceStartError, match=f"port {port} on 127.0.0.1 is busy"):
            node.start()
