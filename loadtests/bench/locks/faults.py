"""The two real faults of the `locks` phase, one round at a time.

* pause: a worker process stops itself (SIGSTOP) between its read and its
  write while holding the lock; we see its state `T` in /proc, let other worker
  processes buy for longer than the lock's TTL, then SIGCONT it.
* failover: a Redis primary with an asynchronous replica. The replica is
  stopped (SIGSTOP) so it cannot copy the lock; a worker takes the lock on the
  primary and waits inside its critical section; the primary is killed (-9), the
  replica resumes and is promoted (REPLICAOF NO ONE); a second worker takes the
  same lock there; then the first one writes.

Each round sells a fresh item; Postgres counts what was sold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import redis.asyncio as aioredis

from infra.embedded.redis import RedisNode
from loadtests.bench.errors import BenchError
from loadtests.bench.locks.designs import LockSetup
from loadtests.bench.locks.worker import HOLD_NONE, HOLD_STOP, HOLD_WAIT, HOLDING, STARTED

STATE_POLL_S = 0.02
STATE_TIMEOUT_S = 30.0
WORKER_TIMEOUT_S = 60.0
LINK_TIMEOUT_S = 10.0

NewItem = Callable[[int], Awaitable[str]]  # stock -> a fresh item id
Sold = Callable[[str], Awaitable[int]]  # item id -> units sold (per Postgres)


@dataclass(frozen=True, slots=True)
class Round:
    stock: int
    sold: int
    evidence: dict[str, bool]  # what was checked that the fault was really there
    outcomes: dict[str, int]

    @property
    def oversold(self) -> int:
        return max(0, self.sold - self.stock)


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, T stopped, Z, ...); '' when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


async def wait_state(pid: int, state: str, timeout_s: float = STATE_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process_state(pid) == state:
            return True
        await asyncio.sleep(STATE_POLL_S)
    return False


@dataclass(frozen=True, slots=True)
class Workers:
    """How to start a buyer process (worker.py) of one design."""

    log_path: Path
    topic: str = ""  # flashsale: the partition lease's topic

    @contextlib.asynccontextmanager
    async def start(
        self, setup: LockSetup, item: str, buyer: str, count: int, hold: str
    ) -> AsyncIterator[asyncio.subprocess.Process]:
        """The worker, killed on exit if it is still there (also SIGCONT'd first)."""
        await asyncio.to_thread(self.log_path.parent.mkdir, parents=True, exist_ok=True)
        log = await asyncio.to_thread(self.log_path.open, "ab")
        with log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "loadtests.bench.locks.worker",
                setup.to_json(),
                item,
                buyer,
                "--count",
                str(count),
                "--hold",
                hold,
                "--deadline-s",
                str(WORKER_TIMEOUT_S),
                "--topic",
                self.topic,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        try:
            yield process
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
                    process.kill()
            await process.wait()


async def finish(process: asyncio.subprocess.Process) -> dict[str, int]:
    """Its outcomes (the last stdout line), bounded in time."""
    try:
        out, _ = await asyncio.wait_for(process.communicate(), WORKER_TIMEOUT_S)
    except TimeoutError as exc:
        raise BenchError(f"worker {process.pid} did not finish") from exc
    lines = out.decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        raise BenchError(f"worker {process.pid} failed (exit {process.returncode})")
    outcomes: dict[str, int] = json.loads(lines[-1])
    return outcomes


async def pause_round(
    setup: LockSetup,
    workers: Workers,
    new_item: NewItem,
    sold: Sold,
    stock: int,
    others: int,
    pause_s: float,
) -> Round:
    """The holder stops between read and write for `pause_s` (> TTL) while others buy."""
    item = await new_item(stock)
    # Buyer names are unique per item: flashsale would take a name seen before
    # for a retry of the same purchase.
    async with workers.start(setup, item, f"{item}-paused", 1, HOLD_STOP) as paused:
        stopped = await wait_state(paused.pid, "T")
        if not stopped:
            raise BenchError(f"{setup.design}: the holder {paused.pid} never stopped")
        async with contextlib.AsyncExitStack() as stack:
            buyers = [
                await stack.enter_async_context(
                    workers.start(setup, item, f"{item}-other{n}", 4 * stock, HOLD_NONE)
                )
                for n in range(others)
            ]
            # The pause counts from the moment the others buy: started on a busy
            # machine, they could still be importing when the holder woke up.
            await asyncio.gather(*(_started(buyer) for buyer in buyers))
            await asyncio.sleep(pause_s)
            still_stopped = process_state(paused.pid) == "T"
            os.kill(paused.pid, signal.SIGCONT)
            results = [await finish(process) for process in [paused, *buyers]]
    evidence = {"holder_state_T": stopped, "still_T_after_pause": still_stopped}
    return Round(stock, await sold(item), evidence, _merge(results))


async def _started(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), WORKER_TIMEOUT_S)
    except TimeoutError as exc:
        raise BenchError(f"buyer {process.pid} did not start") from exc
    if line.decode().strip() != STARTED:
        raise BenchError(f"buyer {process.pid} said {line!r} instead of starting")


def _merge(results: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for result in results:
        for key, n in result.items():
            merged[key] = merged.get(key, 0) + n
    return merged


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
    return Round(1, await sold(item), evidence, _merge([holder_outcomes, second_outcomes]))


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
