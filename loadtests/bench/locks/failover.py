"""The failover fault of the `locks` phase: a Redis primary with an asynchronous
replica. The replica is stopped (SIGSTOP) so it cannot copy the lock; a worker
takes the lock on the primary and waits inside its critical section; the primary
is killed (-9), the replica resumes and is promoted (REPLICAOF NO ONE); a second
worker takes the same lock there; then the first one writes.

Each round sells a fresh item; Postgres counts what was sold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import redis.asyncio as aioredis

from infra.embedded.redis import RedisNode
from loadtests.bench.errors import BenchError
from loadtests.bench.locks.designs import LockSetup
from loadtests.bench.locks.faults import (
    STATE_POLL_S,
    WORKER_TIMEOUT_S,
    NewItem,
    Round,
    Sold,
    Workers,
    finish,
    merge,
    wait_state,
)
from loadtests.bench.locks.worker import HOLD_NONE, HOLD_WAIT, HOLDING

LINK_TIMEOUT_S = 10.0


@dataclass
class FailoverNodes:
    """Redis nodes of one failover round: `failed` primaries each with a replica, and
    the healthy rest; redis_urls before and after."""

    root: Path
    nodes: int
    failed: int

    def __post_init__(self) -> None:
        self.primaries = [RedisNode(self.root) for _ in range(self.nodes)]
        self.replicas = [RedisNode(self.root) for _ in range(self.failed)]

    def start(self) -> None:
        for node in [*self.primaries, *self.replicas]:
            node.start()

    def stop(self) -> None:
        for node in [*self.primaries, *self.replicas]:
            node.stop()

    def urls_before(self) -> tuple[str, ...]:
        return tuple(_url(node) for node in self.primaries)

    def urls_after(self) -> tuple[str, ...]:
        promoted = [_url(node) for node in self.replicas]
        return (*promoted, *(_url(node) for node in self.primaries[self.failed :]))


def _url(node: RedisNode) -> str:
    return f"redis://127.0.0.1:{node.port}/0"


async def failover_round(
    setup: LockSetup,
    workers: Workers,
    new_item: NewItem,
    sold: Sold,
    nodes: FailoverNodes,
    lock_key: Callable[[str], str],
) -> Round:
    """A holds the lock granted by the primaries; they fail over; B asks the new ones."""
    await asyncio.to_thread(nodes.start)
    try:
        async with _clients(nodes) as (primaries, replicas):
            for replica, primary in zip(replicas, nodes.primaries, strict=False):
                await replica.replicaof("127.0.0.1", primary.port)
                await _wait_link(replica)
            return await _failover(
                setup, workers, new_item, sold, nodes, lock_key, primaries, replicas
            )
    finally:
        await asyncio.to_thread(nodes.stop)


async def _failover(
    setup: LockSetup,
    workers: Workers,
    new_item: NewItem,
    sold: Sold,
    nodes: FailoverNodes,
    lock_key: Callable[[str], str],
    primaries: list[aioredis.Redis],
    replicas: list[aioredis.Redis],
) -> Round:
    item = await new_item(1)
    key = lock_key(item)
    replica_pids = [node.pid for node in nodes.replicas if node.pid is not None]
    for pid in replica_pids:
        os.kill(pid, signal.SIGSTOP)
    cut_off = all([await wait_state(pid, "T") for pid in replica_pids])
    # A stopped process still receives into its socket buffer: the primary drops
    # the replica's link too, as a partition would, so the lock is never sent.
    for primary in primaries[: nodes.failed]:
        await primary.client_kill_filter(_type="replica")
    before = replace(setup, redis_urls=nodes.urls_before())
    async with workers.start(before, item, f"{item}-holder", 1, HOLD_WAIT) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        line = await asyncio.wait_for(holder.stdout.readline(), WORKER_TIMEOUT_S)
        if line.decode().strip() != HOLDING:
            raise BenchError(f"{setup.design}: the holder did not take the lock")
        granted = all([await client.exists(key) == 1 for client in primaries[: nodes.failed]])
        for node in nodes.primaries[: nodes.failed]:
            await asyncio.to_thread(node.kill)
        for pid in replica_pids:
            os.kill(pid, signal.SIGCONT)
        for replica in replicas:
            await replica.replicaof("NO", "ONE")
        lacked = all([await replica.exists(key) == 0 for replica in replicas])
        after = replace(setup, redis_urls=nodes.urls_after())
        async with workers.start(after, item, f"{item}-second", 1, HOLD_NONE) as second:
            second_outcomes = await finish(second)
        holder.stdin.write(b"go\n")
        await holder.stdin.drain()
        holder_outcomes = await finish(holder)
    evidence = {
        "replica_state_T": cut_off,
        "lock_on_failed_primary": granted,
        "promoted_replica_lacked_key": lacked,
    }
    return Round(1, await sold(item), evidence, merge([holder_outcomes, second_outcomes]))


@contextlib.asynccontextmanager
async def _clients(
    nodes: FailoverNodes,
) -> AsyncIterator[tuple[list[aioredis.Redis], list[aioredis.Redis]]]:
    async with contextlib.AsyncExitStack() as stack:
        primaries = [
            await stack.enter_async_context(aioredis.from_url(_url(node)))
            for node in nodes.primaries
        ]
        replicas = [
            await stack.enter_async_context(aioredis.from_url(_url(node)))
            for node in nodes.replicas
        ]
        yield primaries, replicas


async def _wait_link(replica: aioredis.Redis) -> None:
    deadline = time.monotonic() + LINK_TIMEOUT_S
    while time.monotonic() < deadline:
        info = await replica.info("replication")
        if info.get("master_link_status") == "up":
            return
        await asyncio.sleep(STATE_POLL_S)
    raise BenchError("the Redis replica never linked to its primary")
