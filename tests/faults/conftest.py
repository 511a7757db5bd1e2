"""A fresh embedded stack per fault test: the test kills and restarts its parts."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from infra.faults import FaultInjector
from infra.stack import EmbeddedStack
from loadtests.checks.faultcheck import FaultReport, check_fault_run
from loadtests.sale.admin import create_item
from loadtests.sale.target import Target
from loadtests.sale.traffic import TrafficOutcome, run_traffic
from services.settings import SESSION_TIMEOUT_S, Settings
from tests.conftest import fresh_id

ITEMS = 3
# Enough units that the sale is still on when the fault hits.
STOCK = 150
RATE_PER_S = 60.0


@dataclass
class FaultStack:
    stack: EmbeddedStack
    faults: FaultInjector

    @property
    def target(self) -> Target:
        return self.stack.stack_file().target()

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    async def create_items(self, count: int = ITEMS, stock: int = STOCK) -> list[str]:
        items = [fresh_id() for _ in range(count)]
        async with aiohttp.ClientSession() as session:
            for item_id in items:
                await create_item(session, self.target, item_id, stock)
        return items

    async def sale_with_fault(
        self,
        fault: Callable[[], object],
        at_s: float = 2.0,
        duration_s: float = 8.0,
        stock: int = STOCK,
    ) -> tuple[FaultReport, TrafficOutcome, list[str]]:
        """Buy steadily for `duration_s`, inject `fault` after `at_s`, then check everything."""
        items = await self.create_items(stock=stock)
        traffic = asyncio.create_task(
            run_traffic(self.target, items, duration_s, RATE_PER_S, seed=7)
        )
        await asyncio.sleep(at_s)
        await asyncio.to_thread(fault)
        outcome = await traffic
        report = await check_fault_run(
            self.settings.database_url, items, outcome.accepted, outcome.inconsistent_ids
        )
        return report, outcome, items


def fault_settings() -> Settings:
    return Settings.from_env(
        {},
        gateway_port=0,
        postgres_fsync=False,
        partitions=4,
        # The product's own (2 s): the embedded broker holds each rebalance for half
        # of it (settings.py), so 6 s cost every fault test 3 s a rebalance and 6 s
        # more before a dead member's partitions moved.
        session_timeout_s=SESSION_TIMEOUT_S,
        reservation_stale_s=3.0,
        reconcile_interval_s=1.0,
        rejoin_stuck_s=15.0,
    )


@pytest.fixture
def fault_stack() -> Iterator[FaultStack]:
    root = Path(tempfile.mkdtemp(prefix="flashsale-faults-"))
    stack = EmbeddedStack(root, fault_settings())
    try:
        stack.start_services()
        stack.start_processes(consumers=2)
        yield FaultStack(stack, FaultInjector(stack))
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
