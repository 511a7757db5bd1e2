"""The `locks` phase: each design's spike, its pause rounds, its failover rounds.

The services it needs beyond the stack (etcd, three independent Redis servers
for Redlock, throwaway primaries and replicas for the failovers) are started
here by the embedded stack code on free ports and stopped on exit, whatever
happens (Ctrl-C included).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from infra.embedded.etcd import EmbeddedEtcd
from infra.embedded.redis import RedisNode
from loadtests.bench.baselines import load_queries as baseline_queries
from loadtests.bench.context import Bench, StackAccess
from loadtests.bench.locks.designs import (
    FLASHSALE,
    LOCK_DESIGNS,
    REDIS_DESIGNS,
    REDLOCK,
    LockSetup,
    library,
    load_queries,
    redis_key,
)
from loadtests.bench.locks.failover import FailoverNodes, failover_round
from loadtests.bench.locks.faults import Workers, pause_round
from loadtests.bench.locks.figures import (
    FAILOVER_TTL_S,
    PAUSE_S,
    PAUSE_TTL_S,
    DesignFigures,
)
from loadtests.bench.locks.section import confirmed
from loadtests.bench.runs import SystemRun
from loadtests.bench.servers import spawn_server, stop_server, wait_ready
from loadtests.bench.systems import BaselineSystem, SaleSystem
from services.store.items import upsert_item
from services.store.leases import ensure_leases

Progress = Callable[[str], None]

SPIKE_MAX_REQUESTS = 2000  # the lock designs answer a few hundred per second
SPIKE_TTL_S = 10.0  # the articles' usual "long enough" lease
SPIKE_WAIT_S = 10.0
PAUSE_WAIT_S = 1.0  # waiters retry, so they notice an expired lock
PAUSE_STOCK = 3
PAUSE_OTHERS = 2
FAILOVER_WAIT_S = 1.0
REDLOCK_NODES = 3


@dataclass(frozen=True, slots=True)
class LocksOptions:
    requests: int
    stock: int
    pause_rounds: int
    failover_rounds: int
    log_dir: Path


async def run_locks(
    bench: Bench, stack: StackAccess, flashsale: SaleSystem, options: LocksOptions, say: Progress
) -> dict[str, DesignFigures]:
    bench_queries = await asyncio.to_thread(_bench_queries)
    async with _services(options.log_dir) as (etcd, redlock_urls):
        base = LockSetup("", stack.target.database_url, (stack.target.redis_url,), etcd.port)
        figures: dict[str, DesignFigures] = {}
        for design in LOCK_DESIGNS:
            setup = replace(base, design=design)
            if design == REDLOCK:
                setup = replace(setup, redis_urls=redlock_urls)
            figures[design] = await _lock_design(bench, setup, bench_queries, options, say)
        figures[FLASHSALE] = await _flashsale(bench, stack, flashsale, options, say)
    return figures


def _bench_queries() -> dict[str, str]:
    return {**baseline_queries(), **load_queries()}


@contextlib.asynccontextmanager
async def _services(log_dir: Path) -> AsyncIterator[tuple[EmbeddedEtcd, tuple[str, ...]]]:
    root = log_dir / "locks"
    etcd = EmbeddedEtcd(root)
    nodes = [RedisNode(root / "redlock") for _ in range(REDLOCK_NODES)]
    try:
        await asyncio.to_thread(etcd.start)
        for node in nodes:
            await asyncio.to_thread(node.start)
        yield etcd, tuple(f"redis://127.0.0.1:{node.port}/0" for node in nodes)
    finally:
        for node in nodes:
            await asyncio.to_thread(node.stop)
        await asyncio.to_thread(etcd.stop)


async def _lock_design(
    bench: Bench,
    setup: LockSetup,
    queries: dict[str, str],
    options: LocksOptions,
    say: Progress,
) -> DesignFigures:
    design = setup.design
    figures = DesignFigures(design, library(design))
    requests = min(options.requests, SPIKE_MAX_REQUESTS)
    say(f"locks {design}: {requests} buyers for {options.stock} units")
    figures.spike = await _spike(bench, replace(setup, ttl_s=SPIKE_TTL_S), queries, options)
    await _prepare(setup, bench)

    async def new_item(stock: int) -> str:
        item = f"locks-{design}-{secrets.token_hex(3)}"
        await bench.pool.execute(queries["create_item"], item, stock)
        return item

    async def sold(item: str) -> int:
        row = await bench.pool.fetchrow(queries["tally"], item)
        return 0 if row is None else int(row["orders"])

    workers = Workers(options.log_dir / f"locks-{design}-workers.log")
    paused = replace(setup, ttl_s=PAUSE_TTL_S, wait_s=PAUSE_WAIT_S)
    for n in range(options.pause_rounds):
        say(f"locks {design}: pause round {n + 1}/{options.pause_rounds}")
        figures.pause.append(
            await pause_round(paused, workers, new_item, sold, PAUSE_STOCK, PAUSE_OTHERS, PAUSE_S)
        )
    if design in REDIS_DESIGNS:
        failover = replace(setup, ttl_s=FAILOVER_TTL_S, wait_s=FAILOVER_WAIT_S)
        nodes = REDLOCK_NODES if design == REDLOCK else 1
        key = functools.partial(redis_key, design)
        root = options.log_dir / "locks" / f"failover-{design}"
        figures.failover = []
        for n in range(options.failover_rounds):
            say(f"locks {design}: failover round {n + 1}/{options.failover_rounds}")
            figures.failover.append(
                await failover_round(
                    failover, workers, new_item, sold, FailoverNodes(root, nodes, 1), key
                )
            )
        if design == REDLOCK:
            say(f"locks {design}: two of three nodes failed over")
            figures.failover_two_of_three = [
                await failover_round(
                    failover, workers, new_item, sold, FailoverNodes(root, nodes, 2), key
                )
            ]
    return figures


async def _prepare(setup: LockSetup, bench: Bench) -> None:
    """The fenced design's column (the others ignore it)."""
    await bench.pool.execute(load_queries()["add_fence"])


async def _spike(
    bench: Bench, setup: LockSetup, queries: dict[str, str], options: LocksOptions
) -> SystemRun:
    await _prepare(setup, bench)
    log = options.log_dir / f"locks-{setup.design}.log"
    process, port = await spawn_server(
        ["loadtests.bench.locks.server", setup.to_json(), f"--secret={bench.secret}"], log
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url, process, log, setup.design)
        system = BaselineSystem(setup.design, url, bench.pool, queries, True)
        return await bench.sale(system, options.stock, min(options.requests, SPIKE_MAX_REQUESTS))
    finally:
        await stop_server(process)


async def _flashsale(
    bench: Bench, stack: StackAccess, system: SaleSystem, options: LocksOptions, say: Progress
) -> DesignFigures:
    figures = DesignFigures(FLASHSALE, library(FLASHSALE))
    requests = min(options.requests, SPIKE_MAX_REQUESTS)
    say(f"locks flashsale: {requests} buyers for {options.stock} units")
    figures.spike = await bench.sale(system, options.stock, requests)
    topic = f"locks-flashsale-{secrets.token_hex(3)}"
    await ensure_leases(bench.pool, topic, 1)

    async def new_item(stock: int) -> str:
        item = f"locks-flashsale-{secrets.token_hex(3)}"
        await upsert_item(bench.pool, item, stock, 1)
        return item

    async def sold(item: str) -> int:
        return await confirmed(bench.pool, item)

    workers = Workers(options.log_dir / "locks-flashsale-workers.log", topic)
    setup = LockSetup(FLASHSALE, stack.target.database_url)
    for n in range(options.pause_rounds):
        say(f"locks flashsale: pause round {n + 1}/{options.pause_rounds}")
        figures.pause.append(
            await pause_round(setup, workers, new_item, sold, PAUSE_STOCK, PAUSE_OTHERS, PAUSE_S)
        )
    return figures
