"""`rebalance`: how late purchases become final while consumers scale 2 -> 4 -> 1.

Buyers keep buying an item with stock for all of them while an operator grows
the consumers to 4 and then shrinks them to 1 (`consumers scale`, as in the
README). Each purchase's wait is Postgres' `applied_at - admitted_at`: from the
gateway's admission (just before its 202) to the commit of its final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from loadtests.bench.loadgen import LoadPlan, LoadResult
from loadtests.bench.systems import SaleSystem

Scale = Callable[[int], Awaitable[None]]
Drive = Callable[[LoadPlan], Awaitable[LoadResult]]
Plan = Callable[[SaleSystem, str, str, int], LoadPlan]

STEPS = (4, 1)  # from the bench's 2 consumers
BEFORE_FIRST_STEP_S = 2.0
BETWEEN_STEPS_S = 5.0
AFTER_LAST_STEP_S = 3.0
CHUNK_REQUESTS = 1000
MAX_CHUNKS = 200
WAITS_SQL = """
SELECT extract(epoch FROM applied_at - admitted_at)::float8 AS wait_s
FROM purchases WHERE item_id = $1 ORDER BY wait_s
"""


@dataclass(frozen=True, slots=True)
class RebalanceFigures:
    p99_final_s: float
    max_final_s: float
    purchases: int
    steps: tuple[int, ...]
    scale_s: tuple[float, ...]  # how long each `scale` took to return


async def measure_rebalance(
    system: SaleSystem,
    pool: asyncpg.Pool,
    drive: Drive,
    plan: Plan,
    scale: Scale,
    settle_timeout_s: float,
) -> RebalanceFigures:
    run = secrets.token_hex(3)
    item_id = f"bench-{run}-rebalance"
    await system.create_item(item_id, CHUNK_REQUESTS * MAX_CHUNKS)
    scaling = asyncio.create_task(_scale_steps(scale))
    admitted = 0
    try:
        for chunk in range(MAX_CHUNKS):
            load = await drive(plan(system, item_id, f"r-{run}-{chunk}", CHUNK_REQUESTS))
            admitted += load.count(202)
            if scaling.done():
                break
        scale_s = await scaling
    finally:
        if not scaling.done():
            scaling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scaling
    await system.settle(item_id, admitted, settle_timeout_s)
    waits = [row["wait_s"] for row in await pool.fetch(WAITS_SQL, item_id)]
    return RebalanceFigures(
        p99_final_s=round(_percentile(waits, 0.99), 3),
        max_final_s=round(max(waits, default=0.0), 3),
        purchases=len(waits),
        steps=STEPS,
        scale_s=scale_s,
    )


async def _scale_steps(scale: Scale) -> tuple[float, ...]:
    await asyncio.sleep(BEFORE_FIRST_STEP_S)
    took = []
    for index, consumers in enumerate(STEPS):
        if index:
            await asyncio.sleep(BETWEEN_STEPS_S)
        started = time.monotonic()
        await scale(consumers)
        took.append(round(time.monotonic() - started, 2))
    await asyncio.sleep(AFTER_LAST_STEP_S)
    return tuple(took)


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(int(fraction * len(sorted_values)), len(sorted_values) - 1)]
