"""One bench run: every system under the same load, then the pause, apply,
rebalance and locks phases (each phase's shared parts: loadtests.bench.context)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from dataclasses import replace

import asyncpg

from loadtests.bench.apply import measure_apply
from loadtests.bench.baselines import (
    BARE_HTTP,
    POSTGRES_ROW,
    REDIS_LOCK,
    BaselineConfig,
    load_queries,
)
from loadtests.bench.context import (
    APPLY,
    LOCKS,
    OPEN_STOCK,
    REBALANCE,
    SPIKE,
    Bench,
    BenchConfig,
    Progress,
    StackAccess,
)
from loadtests.bench.cpu import Parts, SystemProcesses
from loadtests.bench.loadgen import load_clients
from loadtests.bench.locks.figures import DesignFigures
from loadtests.bench.locks.phase import LocksOptions, run_locks
from loadtests.bench.pause import (
    PAUSE_LOCK_TTL_MS,
    PAUSE_MS,
    PAUSE_REQUESTS,
    PAUSE_STOCK,
    flashsale_under_pause,
)
from loadtests.bench.rebalance import RebalanceFigures, measure_rebalance
from loadtests.bench.report import BenchResults
from loadtests.bench.runs import SystemRun
from loadtests.bench.servers import RunningServer, baseline_servers
from loadtests.bench.systems import BareSystem, BaselineSystem, FlashsaleSystem, SaleSystem
from services.store.db import open_pool
from services.taskdump import install_task_dump

FLASHSALE = "flashsale"
REDIS_LOCK_QUEUED = "redis_lock_queued"
REDIS_LOCK_PAUSED = "redis_lock_paused"

POOL_SIZE = 10
# redis_lock sells one unit at a time: its open-stock run is shorter.
OPEN_STOCK_LOCK_MAX_REQUESTS = 2_000
APPLY_MAX_RECORDS = 40_000
ONE_BY_ONE_MAX_RECORDS = 2_000


async def run_bench(stack: StackAccess, config: BenchConfig, progress: Progress) -> BenchResults:
    """Start the clients and baselines, run every phase, stop them (also on error)."""
    install_task_dump()  # kill -USR1: what a run that seems stuck is waiting for
    queries = await asyncio.to_thread(load_queries)
    async with contextlib.AsyncExitStack() as resources:
        pool = await open_pool(stack.target.database_url, POOL_SIZE)
        resources.push_async_callback(pool.close)
        await pool.execute(queries["create_tables"])
        progress(f"starting {config.clients} client processes and the baseline servers")
        clients = await resources.enter_async_context(
            load_clients(config.clients, config.log_dir / "bench-clients.log")
        )
        servers = await resources.enter_async_context(
            baseline_servers(_baselines(stack, config.server_processes), config.log_dir)
        )
        bench = Bench(clients, config, stack.target.secret, pool)
        results = await _phases(
            bench, _systems(stack, servers, pool, queries), _meters(stack, servers), progress
        )
        if REBALANCE in config.phases and stack.scale is not None:
            results = replace(results, rebalance=await _rebalance(bench, stack, progress))
        if LOCKS in config.phases:
            locks = await _locks(bench, stack, _systems(stack, servers, pool, queries), progress)
            results = replace(results, locks=locks)
        return results


def _systems(
    stack: StackAccess,
    servers: dict[str, RunningServer],
    pool: asyncpg.Pool,
    queries: dict[str, str],
) -> dict[str, SaleSystem]:
    """In the order they run: the cheapest first, flashsale last."""
    systems: list[SaleSystem] = [
        BareSystem(servers[BARE_HTTP].url),
        BaselineSystem(POSTGRES_ROW, servers[POSTGRES_ROW].url, pool, queries, False),
        BaselineSystem(REDIS_LOCK, servers[REDIS_LOCK].url, pool, queries, True),
        BaselineSystem(REDIS_LOCK_QUEUED, servers[REDIS_LOCK_QUEUED].url, pool, queries, True),
        BaselineSystem(REDIS_LOCK_PAUSED, servers[REDIS_LOCK_PAUSED].url, pool, queries, True),
        FlashsaleSystem(stack.target, pool, queries),
    ]
    return {system.name: system for system in systems}


def _meters(
    stack: StackAccess, servers: dict[str, RunningServer]
) -> dict[str, Callable[[], Parts]]:
    """The processes whose CPU each system spends, by part: its server, and the
    Redis and Postgres it uses (flashsale: every process of the stack)."""
    meters: dict[str, Callable[[], Parts]] = {}
    if stack.processes is not None:
        meters[FLASHSALE] = stack.processes
    shared = stack.shared
    meters[BARE_HTTP] = _fixed({"server": SystemProcesses(single=servers[BARE_HTTP].pids)})
    if shared is not None:
        for name, uses_redis in (
            (POSTGRES_ROW, False),
            (REDIS_LOCK, True),
            (REDIS_LOCK_QUEUED, True),
        ):
            parts = {
                "server": SystemProcesses(single=servers[name].pids),
                "postgres": SystemProcesses(forking=shared.forking),
            }
            if uses_redis:
                parts["redis"] = SystemProcesses(single=shared.single)
            meters[name] = _fixed(parts)
    return meters


def _fixed(parts: Parts) -> Callable[[], Parts]:
    return lambda: parts


async def _phases(
    bench: Bench,
    systems: dict[str, SaleSystem],
    meters: dict[str, Callable[[], Parts]],
    progress: Progress,
) -> BenchResults:
    config = bench.config
    results = BenchResults(config.requests, config.stock, config.concurrency, config.clients)
    if SPIKE in config.phases:
        runs: dict[str, SystemRun] = {}
        for name in (BARE_HTTP, POSTGRES_ROW, REDIS_LOCK, REDIS_LOCK_QUEUED, FLASHSALE):
            progress(f"{name}: {config.requests} buyers for {config.stock} units")
            meter = meters[name]() if name in meters else None
            runs[name] = await bench.sale(
                systems[name], config.stock, config.requests, processes=meter
            )
        progress("lock_under_pause: lock holders and consumers stalled past their lease")
        lock_paused = await _lock_under_pause(bench, systems[REDIS_LOCK_PAUSED])
        flashsale_paused = await flashsale_under_pause(bench.pool, bench.secret)
        results = replace(
            results, systems=runs, lock_paused=lock_paused, flashsale_paused=flashsale_paused
        )
    if OPEN_STOCK in config.phases:
        flashsale, row, lock = await _open_stock(bench, systems, meters, progress)
        results = replace(results, open_stock=flashsale, open_stock_row=row, open_stock_lock=lock)
    if APPLY in config.phases:
        progress("apply: batched vs one purchase per transaction")
        apply = await measure_apply(
            bench.pool,
            bench.secret,
            min(config.requests, APPLY_MAX_RECORDS),
            max(1, min(config.requests // 5, ONE_BY_ONE_MAX_RECORDS)),
        )
        results = replace(results, apply=apply)
    return results


async def _locks(
    bench: Bench, stack: StackAccess, systems: dict[str, SaleSystem], progress: Progress
) -> dict[str, DesignFigures]:
    config = bench.config
    options = LocksOptions(
        requests=config.requests,
        stock=config.stock,
        pause_rounds=config.lock_pause_rounds,
        failover_rounds=config.lock_failover_rounds,
        log_dir=config.log_dir,
    )
    return await run_locks(bench, stack, systems[FLASHSALE], options, progress)


def _baselines(stack: StackAccess, processes: int) -> dict[str, BaselineConfig]:
    """Every baseline server of a run, by name, on the stack's Postgres and Redis;
    `processes` of each (as many as the stack has gateways), but one stalling lock
    server: its pause is one process's."""
    common = BaselineConfig(
        BARE_HTTP,
        stack.target.secret,
        stack.target.database_url,
        stack.target.redis_url,
        processes=processes,
    )
    return {
        BARE_HTTP: common,
        POSTGRES_ROW: replace(common, mode=POSTGRES_ROW),
        REDIS_LOCK: replace(common, mode=REDIS_LOCK),
        REDIS_LOCK_QUEUED: replace(common, mode=REDIS_LOCK, local_queue=True),
        REDIS_LOCK_PAUSED: replace(
            common,
            mode=REDIS_LOCK,
            lock_ttl_ms=PAUSE_LOCK_TTL_MS,
            pause_ms=PAUSE_MS,
            processes=1,
        ),
    }


async def _lock_under_pause(bench: Bench, system: SaleSystem) -> SystemRun:
    """Every buyer at once (one connection each) on the stalling lock server."""
    run = secrets.token_hex(3)
    item_id = f"bench-{run}-paused"
    await system.create_item(item_id, PAUSE_STOCK)
    plan = bench.plan(system, item_id, f"p-{run}", PAUSE_REQUESTS)
    load = await bench.drive(replace(plan, concurrency=PAUSE_REQUESTS, clients=1))
    return SystemRun(load, await system.tally(item_id))


async def _open_stock(
    bench: Bench,
    systems: dict[str, SaleSystem],
    meters: dict[str, Callable[[], Parts]],
    progress: Progress,
) -> tuple[SystemRun, SystemRun, SystemRun]:
    """Every request sells a unit: flashsale, postgres_row, and (fewer requests:
    it sells one at a time) redis_lock, each with the CPU its processes spent."""
    requests = bench.config.requests

    def meter(name: str) -> Parts | None:
        return meters[name]() if name in meters else None

    progress(f"open_stock: {requests} buyers for {requests} units")
    flashsale = await bench.sale(systems[FLASHSALE], requests, requests, False, meter(FLASHSALE))
    progress("open_stock: the same on postgres_row, the hot-row ceiling of design.md")
    row = await bench.sale(systems[POSTGRES_ROW], requests, requests, False, meter(POSTGRES_ROW))
    lock_requests = min(requests, OPEN_STOCK_LOCK_MAX_REQUESTS)
    progress(f"open_stock: {lock_requests} buyers on redis_lock, for its CPU per unit")
    lock = await bench.sale(
        systems[REDIS_LOCK], lock_requests, lock_requests, False, meter(REDIS_LOCK)
    )
    return flashsale, row, lock


async def _rebalance(bench: Bench, stack: StackAccess, progress: Progress) -> RebalanceFigures:
    scale = stack.scale
    assert scale is not None
    system = FlashsaleSystem(stack.target, bench.pool, await asyncio.to_thread(load_queries))

    async def scale_async(count: int) -> None:
        progress(f"rebalance: scaling consumers to {count}")
        await asyncio.to_thread(scale, count)

    progress("rebalance: buying while consumers scale 2 -> 4 -> 1")
    try:
        return await measure_rebalance(
            system,
            bench.pool,
            bench.drive,
            bench.plan,
            scale_async,
            bench.config.settle_timeout_s,
        )
    finally:
        await asyncio.to_thread(scale, stack.consumers)
