"""Consumers killed mid-batch or paused past their session timeout lose nothing,
apply nothing twice, and a paused one commits nothing after its partitions moved."""

from __future__ import annotations

import asyncio
import os
import signal

from infra.embedded.proc import pid_alive
from infra.stack import wait_for_consumers
from loadtests.checks.faultcheck import check_fault_run
from loadtests.sale.traffic import run_traffic
from services.resources import open_core
from services.store.leases import list_leases
from tests.conftest import wait_for
from tests.faults.conftest import FaultStack


async def test_consumer_killed_mid_batch(fault_stack: FaultStack) -> None:
    victim = fault_stack.faults.consumer_names()[0]
    report, outcome, _ = await fault_stack.sale_with_fault(
        lambda: fault_stack.faults.kill_consumer(victim)
    )
    assert outcome.accepted, outcome.statuses
    assert report.ok, report.all_violations


async def test_consumer_paused_past_session_timeout_is_fenced(fault_stack: FaultStack) -> None:
    settings = fault_stack.settings
    zombie, survivor = fault_stack.faults.consumer_names()
    zombie_pid = fault_stack.stack.consumer_pids[zombie]

    async def owners() -> set[str | None]:
        async with open_core(settings) as core:
            return {lease.owner for lease in await list_leases(core.pool, settings.topic)}

    # Four session timeouts: the survivor takes every partition well within it.
    pause_s = 4 * settings.session_timeout_s

    async def pause_until_moved() -> None:
        pause = asyncio.create_task(
            asyncio.to_thread(fault_stack.faults.pause_consumer, zombie, pause_s)
        )
        # While the zombie sleeps, the survivor takes every partition.
        await wait_for(lambda: _only(owners, survivor), timeout_s=30, interval_s=0.5)
        await pause

    items = await fault_stack.create_items()
    traffic = asyncio.create_task(
        # Buying before (2 s), during and 6 s after the pause.
        run_traffic(fault_stack.target, items, duration_s=2 + pause_s + 6, rate_per_s=40, seed=3)
    )
    await asyncio.sleep(2)
    await pause_until_moved()
    outcome = await traffic
    report = await check_fault_run(
        settings.database_url, items, outcome.accepted, outcome.inconsistent_ids
    )
    assert report.ok, report.all_violations
    # The zombie woke up and either rejoined the group or left it cleanly.
    assert pid_alive(zombie_pid)


async def _only(owners, name: str) -> bool:  # type: ignore[no-untyped-def]
    return await owners() == {name}


async def test_consumers_leaving_mid_rebalance_do_not_strand_partitions(
    fault_stack: FaultStack,
) -> None:
    """Two members leave at once, the second while the group still rebalances for
    the first; the survivor ends up owning every partition (rejoining if stuck)."""
    stack = fault_stack.stack
    stack.add_consumer("third")
    names = list(stack.consumer_pids)
    await asyncio.to_thread(wait_for_consumers, stack.settings, names)
    survivor, *leaving = names
    for name in reversed(leaving):  # the newest member first, as `consumers scale` did
        os.kill(stack.consumer_pids.pop(name), signal.SIGTERM)
        await asyncio.sleep(0.3)  # the second leaves while the group rebalances
    await asyncio.to_thread(wait_for_consumers, stack.settings, [survivor], 60.0)
    report, _, _ = await fault_stack.sale_with_fault(lambda: None, at_s=0.5, duration_s=3.0)
    assert report.ok, report.all_violations
