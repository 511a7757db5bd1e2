"""`flashsale chaos`: a sale under a random, replayable schedule of faults."""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from infra.faults import FaultInjector
from infra.stack import EmbeddedStack
from loadtests.faultcheck import FaultReport, check_fault_run, wait_for_finals
from loadtests.sale import SaleTarget, create_item
from loadtests.traffic import TrafficOutcome, run_traffic
from services.settings import Settings

CONSUMERS = 3
ITEMS = 4
RATE_PER_S = 40.0
# A pause longer than the session timeout, so the partitions really move.
SESSION_TIMEOUT_S = 6.0
PAUSE_S = 9.0
POSTGRES_DOWN_S = 2.0
FIRST_FAULT_S = 2.0
QUIET_TAIL_S = 3.0
MEAN_GAP_S = 6.0
DATA_LOSING = ("restart_broker", "restart_redis")
HEAL_BOUND_S = 30.0


@dataclass(frozen=True, slots=True)
class FaultEvent:
    at_s: float
    fault: str

    def describe(self) -> str:
        return f"t+{self.at_s:5.1f}s  {self.fault}"


def schedule(seed: int, duration_s: float) -> list[FaultEvent]:
    """The same seed and duration always give the same schedule."""
    rng = random.Random(seed)
    events = []
    at = FIRST_FAULT_S + rng.uniform(0, MEAN_GAP_S / 2)
    while at < duration_s - QUIET_TAIL_S:
        fault = rng.choice(
            [
                "kill_consumer",
                "pause_consumer",
                "restart_broker",
                "restart_redis",
                "restart_postgres",
            ]
        )
        events.append(FaultEvent(round(at, 1), fault))
        at += rng.uniform(MEAN_GAP_S / 2, MEAN_GAP_S * 1.5)
    return events


def _inject(faults: FaultInjector, event: FaultEvent, rng: random.Random) -> str:
    """Run one fault (blocking); returns what was done, for the log."""
    if event.fault in ("kill_consumer", "pause_consumer"):
        name = rng.choice(sorted(faults.consumer_names()))
        if event.fault == "kill_consumer":
            fresh = faults.kill_consumer(name)
            return f"kill -9 {name}, started {fresh}"
        faults.pause_consumer(name, PAUSE_S)
        return f"SIGSTOP {name} for {PAUSE_S:.0f}s, then SIGCONT"
    if event.fault == "restart_postgres":
        faults.restart_postgres(POSTGRES_DOWN_S)
        return f"postgres down {POSTGRES_DOWN_S:.0f}s"
    getattr(faults, event.fault)()
    return event.fault.replace("_", " ")


async def _heal(faults: FaultInjector, outcome: TrafficOutcome, console: Console) -> None:
    """Wait until every purchase accepted so far is final.

    The broker (log) and Redis (reservation records) each hold a copy of an
    unapplied purchase; losing both before one of them is replayed loses it.
    That double fault is outside the guarantee, so the schedule never makes it.
    """
    missing, _ = await wait_for_finals(
        faults.stack.settings.database_url, dict(outcome.accepted), HEAL_BOUND_S
    )
    if missing:
        console.print(f"[red]{len(missing)} purchases still not final before the next fault[/red]")


async def _run_schedule(
    faults: FaultInjector,
    events: list[FaultEvent],
    seed: int,
    outcome: TrafficOutcome,
    console: Console,
) -> None:
    rng = random.Random(seed + 1)
    started = time.monotonic()
    for event in events:
        delay = event.at_s - (time.monotonic() - started)
        if delay > 0:
            await asyncio.sleep(delay)
        if event.fault in DATA_LOSING:
            await _heal(faults, outcome, console)
        began = time.monotonic() - started
        done = await asyncio.to_thread(_inject, faults, event, rng)
        ended = time.monotonic() - started
        console.print(f"[yellow]fault[/yellow] t+{began:5.1f}s..{ended:5.1f}s {done}")


async def _sale(
    stack: EmbeddedStack, events: list[FaultEvent], duration_s: float, seed: int, console: Console
) -> tuple[TrafficOutcome, FaultReport, list[str]]:
    settings = stack.settings
    target = SaleTarget(
        f"http://127.0.0.1:{settings.gateway_port}", settings.admin_token, settings.secret
    )
    stock = int(duration_s * RATE_PER_S / ITEMS * 0.8)  # sells out near the end
    items = [f"chaos-{seed}-{n}" for n in range(ITEMS)]
    import aiohttp  # noqa: PLC0415

    async with aiohttp.ClientSession() as session:
        for item_id in items:
            await create_item(session, target, item_id, stock)
    outcome = TrafficOutcome()
    traffic = asyncio.create_task(
        run_traffic(target, items, duration_s, RATE_PER_S, seed=seed, outcome=outcome)
    )
    await _run_schedule(FaultInjector(stack), events, seed, outcome, console)
    await traffic
    console.print("sale over; waiting for every accepted purchase to be final")
    report = await check_fault_run(
        settings.database_url, items, outcome.accepted, outcome.inconsistent_ids
    )
    return outcome, report, items


def run_chaos(duration_s: float, seed: int, console: Console) -> bool:
    events = schedule(seed, duration_s)
    console.print(f"[bold]chaos[/bold] seed {seed}, {duration_s:.0f}s, {len(events)} faults:")
    for event in events:
        console.print(f"  {event.describe()}")
    root = Path(tempfile.mkdtemp(prefix="flashsale-chaos-"))
    settings = Settings.from_env(
        gateway_port=0,
        postgres_fsync=False,
        session_timeout_s=SESSION_TIMEOUT_S,
        reservation_stale_s=3.0,
        reconcile_interval_s=1.0,
    )
    stack = EmbeddedStack(root, settings)
    try:
        with console.status("starting the embedded stack") as spinner:
            stack.start_services(spinner.update)
            stack.start_processes(CONSUMERS, spinner.update)
        outcome, report, _items = asyncio.run(_sale(stack, events, duration_s, seed, console))
        _print_report(console, outcome, report, seed, duration_s)
        return report.ok
    finally:
        with console.status("stopping the stack"):
            stack.stop()
        shutil.rmtree(root, ignore_errors=True)


def _print_report(
    console: Console, outcome: TrafficOutcome, report: FaultReport, seed: int, duration_s: float
) -> None:
    table = Table(title=f"chaos seed {seed}", show_header=False)
    table.add_row("requests", str(outcome.requests))
    for status, count in sorted(outcome.statuses.items()):
        table.add_row(f"answered {status or 'no answer'}", str(count))
    table.add_row("accepted (202)", str(len(outcome.accepted)))
    table.add_row("slowest 202 -> final", f"{report.slowest_final_s:.1f} s")
    for tally in report.invariants.items:
        table.add_row(
            tally.item_id,
            f"stock {tally.stock}, sold {tally.sold}, "
            f"confirmed {tally.confirmed}, rejected {tally.rejected}",
        )
    console.print(table)
    if report.ok:
        console.print(
            "[bold green]invariants hold[/bold green]: no oversell, no double apply, "
            "no lost acceptance, no zombie commit"
        )
        return
    for violation in report.all_violations:
        console.print(f"[bold red]VIOLATION[/bold red] {violation}")
    console.print(f"replay: flashsale chaos --duration {duration_s:.0f} --seed {seed}")
