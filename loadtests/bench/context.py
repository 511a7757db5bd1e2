"""What every phase of a bench run shares: the stack under test, the run's
settings, and the `Bench` that sends a sale's load and counts what sold."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from loadtests.bench.cpu import CpuMeter, Parts, SystemProcesses
from loadtests.bench.loadgen import LoadClients, LoadPlan, LoadResult
from loadtests.bench.runs import ADMITTED, SystemRun
from loadtests.bench.systems import SaleSystem
from loadtests.sale.target import Target

Progress = Callable[[str], None]

SPIKE, OPEN_STOCK, APPLY, REBALANCE, LOCKS = "spike", "open_stock", "apply", "rebalance", "locks"
PHASES = (SPIKE, OPEN_STOCK, APPLY, REBALANCE, LOCKS)
LOCK_PAUSE_ROUNDS = 3
LOCK_FAILOVER_ROUNDS = 3

# Bounds on every phase, so that a stuck system ends the run instead of hanging it.
RUN_TIMEOUT_S = 600.0
SETTLE_TIMEOUT_S = 120.0
WARMUP_MAX_REQUESTS = 500


@dataclass(frozen=True, slots=True)
class StackAccess:
    """The flashsale stack under test (the caller started it): where it answers,
    and what the bench measures and changes in it."""

    target: Target
    # Every process of the stack now, by part (for cpu_us_per_purchase); the
    # Redis and Postgres the baselines share with it; and how to scale its consumers.
    processes: Callable[[], Parts] | None = None
    shared: SystemProcesses | None = None
    scale: Callable[[int], None] | None = None
    consumers: int = 2  # restored after the rebalance phase (the locks phase follows)
    # The stack's Postgres' pgbench (open stock's pgbench_row ceiling); None: not measured.
    pgbench: Path | None = None


@dataclass(frozen=True, slots=True)
class BenchConfig:
    requests: int
    stock: int
    concurrency: int
    clients: int
    log_dir: Path
    run_timeout_s: float = RUN_TIMEOUT_S
    settle_timeout_s: float = SETTLE_TIMEOUT_S
    phases: frozenset[str] = frozenset(PHASES)
    lock_pause_rounds: int = LOCK_PAUSE_ROUNDS
    lock_failover_rounds: int = LOCK_FAILOVER_ROUNDS
    server_processes: int = 1  # gateways of the stack, and processes of each baseline


@dataclass(frozen=True, slots=True)
class Bench:
    """What every phase needs: the client processes, the config, the token secret, Postgres."""

    clients: LoadClients
    config: BenchConfig
    secret: str
    pool: asyncpg.Pool

    def plan(self, system: SaleSystem, item_id: str, buyers: str, requests: int) -> LoadPlan:
        return LoadPlan(
            purchases_url=system.purchases_url,
            item_id=item_id,
            secret=self.secret,
            buyer_prefix=buyers,
            requests=requests,
            concurrency=self.config.concurrency,
            clients=self.config.clients,
            run_timeout_s=self.config.run_timeout_s,
        )

    async def drive(self, plan: LoadPlan) -> LoadResult:
        return await self.clients.drive(plan)

    async def sale(
        self,
        system: SaleSystem,
        stock: int,
        requests: int,
        warm_up: bool = True,
        processes: Parts | None = None,
    ) -> SystemRun:
        """A fresh item, `requests` buyers at once, then what Postgres says; with
        `processes`, the CPU each part spent from the first request to the last commit."""
        run = secrets.token_hex(3)
        if warm_up:
            await self._warm_up(system, run)
        item_id = f"bench-{run}"
        await system.create_item(item_id, stock)
        meter = None if processes is None else CpuMeter(processes)
        if meter is not None:
            meter.start()
        load = await self.drive(self.plan(system, item_id, f"b-{run}", requests))
        await system.settle(item_id, load.count(ADMITTED), self.config.settle_timeout_s)
        parts = None if meter is None else meter.stop()
        return SystemRun(load, await system.tally(item_id), parts)

    async def _warm_up(self, system: SaleSystem, run: str) -> None:
        """Open the servers' pools and connections on an item of its own."""
        requests = max(1, min(WARMUP_MAX_REQUESTS, self.config.requests // 10))
        item_id = f"bench-{run}-warm"
        await system.create_item(item_id, max(1, requests // 2))
        load = await self.drive(self.plan(system, item_id, f"w-{run}", requests))
        await system.settle(item_id, load.count(ADMITTED), self.config.settle_timeout_s)
