"""The open-stock phase: stock for everyone, so every request sells a unit.

flashsale, postgres_row (at its default pool and at every other pool size of the
sweep: the hot row at its best), redis_lock (fewer requests: it sells one at a
time), and pgbench_row: the same row's UPDATE with no HTTP at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.bench.baselines import POOL_SIZE as ROW_POOL_SIZE
from loadtests.bench.baselines import POSTGRES_ROW, REDIS_LOCK
from loadtests.bench.context import Bench, Progress
from loadtests.bench.cpu import Parts
from loadtests.bench.pgbench import PgbenchFigures, pgbench_row, run_seconds
from loadtests.bench.runs import SystemRun
from loadtests.bench.systems import SaleSystem

FLASHSALE = "flashsale"
# postgres_row at other pool sizes than its default 10: its best is the baseline
# to beat (one process each, so Postgres' max_connections holds).
ROW_SWEEP_POOLS = (4, 32, 64)
# redis_lock sells one unit at a time: its open-stock run is shorter.
OPEN_STOCK_LOCK_MAX_REQUESTS = 2_000


@dataclass(frozen=True, slots=True)
class OpenStockRuns:
    flashsale: SystemRun
    row: SystemRun
    lock: SystemRun
    row_by_pool: dict[int, SystemRun] = field(default_factory=dict)
    pgbench_row: PgbenchFigures | None = None


async def run_open_stock(
    bench: Bench,
    systems: dict[str, SaleSystem],
    meters: dict[str, Callable[[], Parts]],
    progress: Progress,
    pgbench: Path | None,
    database_url: str,
) -> OpenStockRuns:
    flashsale, row, lock = await _flashsale_row_lock(bench, systems, meters, progress)
    sweep = await _row_pool_sweep(bench, systems, meters, progress)
    return OpenStockRuns(
        flashsale,
        row,
        lock,
        {ROW_POOL_SIZE: row, **sweep},
        await _pgbench_row(bench, pgbench, database_url, progress),
    )


def row_sweep_names() -> list[str]:
    """The names of postgres_row's servers at the other pool sizes."""
    return [f"{POSTGRES_ROW}_pool{size}" for size in ROW_SWEEP_POOLS]


async def _flashsale_row_lock(
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


async def _row_pool_sweep(
    bench: Bench,
    systems: dict[str, SaleSystem],
    meters: dict[str, Callable[[], Parts]],
    progress: Progress,
) -> dict[int, SystemRun]:
    """postgres_row's open stock at every other pool size: the hot row at its best."""
    requests = bench.config.requests
    runs: dict[int, SystemRun] = {}
    for size, name in zip(ROW_SWEEP_POOLS, row_sweep_names(), strict=True):
        progress(f"open_stock: postgres_row with a pool of {size}")
        meter = meters[name]() if name in meters else None
        runs[size] = await bench.sale(systems[name], requests, requests, False, meter)
    return runs


async def _pgbench_row(
    bench: Bench, pgbench: Path | None, database_url: str, progress: Progress
) -> PgbenchFigures | None:
    if pgbench is None:
        return None
    seconds = run_seconds(bench.config.requests)
    progress(f"open_stock: pgbench_row, the row's UPDATE with no HTTP ({seconds:g}s per count)")
    log = bench.config.log_dir / "pgbench.log"
    return await pgbench_row(pgbench, database_url, seconds, log)
