"""`flashsale chaos`: a sale under a seeded, replayable schedule of faults, checked
the way Jepsen checks databases (design.md, "Testing like an adversary").

The workload (loadtests.chaos.workload) records every client operation in a history;
the nemesis (infra.nemesis) injects faults and records their windows in the same
history; the checker (loadtests.chaos.checker) reads the history and Postgres and names
every violation. The history stays in the run's folder under the state folder.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
from rich.console import Console
from rich.table import Table

from infra.faults import FAULTS, NETWORK_FAULTS, FaultInjector
from infra.lifecycle import stack_lifecycle
from infra.nemesis import HEAL_BOUND_S, SESSION_TIMEOUT_S, FaultEvent, Nemesis, schedule
from infra.netlab import NetLab, NetLabUnavailable
from infra.stack import EmbeddedStack
from loadtests.chaos.checker import CheckReport, check, final_deadline
from loadtests.chaos.history import HistoryWriter
from loadtests.chaos.pgsnapshot import await_finals, read_snapshot
from loadtests.chaos.stall import write_stall_report
from loadtests.chaos.workload import BUYERS_PER_S, ITEMS, WorkloadConfig, plan_items, run_workload
from loadtests.checks.filtercheck import FilterReading, settle_filters
from services.settings import Settings

CONSUMERS = 3
GATEWAYS = 2
HISTORY_FILE = "history.jsonl"
STALL_FILE = "stalls.txt"
# Data folders dropped after the run; the history and the logs stay.
DATA_FOLDERS = ("postgres", "redis", "kafka")


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    duration_s: float
    seed: int
    state_dir: Path = Path(".flashsale")
    items: int = ITEMS
    buyers_per_s: float = BUYERS_PER_S
    faults: tuple[str, ...] = FAULTS

    @property
    def replay(self) -> str:
        faults = "" if set(self.faults) == set(FAULTS) else f" --faults {','.join(self.faults)}"
        return (
            f"flashsale chaos --duration {self.duration_s:g} --seed {self.seed}"
            f" --items {self.items} --rate {self.buyers_per_s:g}{faults}"
        )


def run_chaos(options: ChaosOptions, console: Console) -> bool:
    lab = _network_lab(options, console)
    try:
        return _run(options, console, lab)
    finally:
        if lab is not None:
            lab.destroy()


def _network_lab(options: ChaosOptions, console: Console) -> NetLab | None:
    """The lab when the schedule may cut the network; where it cannot be built
    (not root), the run says so and drops those faults rather than failing."""
    if not NETWORK_FAULTS & set(options.faults):
        return None
    try:
        return NetLab.create()
    except NetLabUnavailable as exc:
        console.print(f"[yellow]network faults left out: {exc}[/yellow]")
        return None


def _run(options: ChaosOptions, console: Console, lab: NetLab | None) -> bool:
    if lab is None:
        options = replace(
            options, faults=tuple(f for f in options.faults if f not in NETWORK_FAULTS)
        )
    events = schedule(options.seed, options.duration_s, options.faults)
    _print_schedule(console, options, events)
    run_dir = options.state_dir / "chaos" / f"seed{options.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    stack = EmbeddedStack(run_dir / "stack", _settings(), netlab=lab)
    writer = HistoryWriter(run_dir / HISTORY_FILE)

    def stop(ended: BaseException | None) -> None:
        writer.close()
        with console.status("stopping the stack"):
            stack.stop()
        for folder in DATA_FOLDERS:
            shutil.rmtree(stack.state_dir / folder, ignore_errors=True)

    with stack_lifecycle(stop):
        with console.status("starting the embedded stack") as spinner:
            stack.start_services(spinner.update)
            stack.start_processes(CONSUMERS, spinner.update, gateways=GATEWAYS)
        report = asyncio.run(_sale(stack, options, events, writer, console))
    _print_report(console, report, options, writer.path.resolve())
    return report.ok


def _settings() -> Settings:
    return Settings.from_env(
        gateway_port=0,
        postgres_fsync=False,
        session_timeout_s=SESSION_TIMEOUT_S,
        reservation_stale_s=3.0,
        reconcile_interval_s=1.0,
    )


async def _sale(
    stack: EmbeddedStack,
    options: ChaosOptions,
    events: list[FaultEvent],
    writer: HistoryWriter,
    console: Console,
) -> CheckReport:
    target = stack.stack_file().target()
    config = WorkloadConfig(
        options.duration_s, options.seed, items=options.items, buyers_per_s=options.buyers_per_s
    )
    started = asyncio.Event()
    workload = asyncio.create_task(run_workload(target, writer, config, started))
    with console.status(f"creating {options.items} items"):
        await _until_started(workload, started)
    console.print(
        f"sale on: {options.items} items, {options.duration_s:g}s of buying"
        " (Postgres with fsync off: the faults kill processes, never the machine)"
    )

    async def heal() -> None:
        await _heal(stack, writer, console)

    nemesis = Nemesis(FaultInjector(stack), writer, heal, console.print, options.seed)
    await asyncio.gather(nemesis.run(events), workload)
    console.print("sale over; waiting for every accepted purchase to be final")
    accepted = writer.history.accepted()
    deadline = max(
        (final_deadline(at, writer.history.faults) for at in accepted.values()), default=0.0
    )
    missing = await await_finals(stack.settings.database_url, set(accepted), deadline)
    if missing:
        await _report_stall(stack, writer, missing, console)
    readings = await _quiet_filters(stack, [item.item_id for item in plan_items(config)], console)
    snapshot = await read_snapshot(stack.settings.database_url)
    return check(writer.history, snapshot, filter_readings=readings)


async def _quiet_filters(
    stack: EmbeddedStack, item_ids: list[str], console: Console
) -> list[FilterReading] | None:
    """Every item's stock filter once the consumers settled and the reconciler had
    HEAL_BOUND_S to repair drift (the same Redis the stack runs now, also after a
    whole-stack restart)."""
    access = stack.stack_file().target().stock_filter
    if access is None:
        return None
    with console.status(f"waiting for {len(item_ids)} stock filters to agree with Postgres"):
        return await settle_filters(
            access, stack.settings.database_url, item_ids, timeout_s=HEAL_BOUND_S
        )


async def _until_started(workload: asyncio.Task[None], started: asyncio.Event) -> None:
    """Until the items exist; the workload's own error if it failed first."""
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait({workload, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if workload.done():
        waiting.cancel()
        workload.result()


async def _heal(stack: EmbeddedStack, writer: HistoryWriter, console: Console) -> None:
    """Until every purchase accepted so far is final (at most HEAL_BOUND_S)."""
    accepted = set(writer.history.accepted())
    try:
        missing = await await_finals(
            stack.settings.database_url, accepted, time.time() + HEAL_BOUND_S
        )
    except (OSError, asyncpg.PostgresError) as exc:
        console.print(f"[red]could not wait for finals before the next fault: {exc}[/red]")
        return
    if missing:
        console.print(f"[red]{len(missing)} purchases still not final before the next fault[/red]")
        await _report_stall(stack, writer, missing, console)


async def _report_stall(
    stack: EmbeddedStack, writer: HistoryWriter, missing: set[str], console: Console
) -> None:
    settings = stack.settings
    path = writer.path.parent / STALL_FILE
    await write_stall_report(
        path,
        writer.history,
        missing,
        database_url=settings.database_url,
        bootstrap=settings.kafka_bootstrap,
        topic=settings.topic,
        partitions=settings.partitions,
    )
    if stack.netlab is not None:
        ports = {
            "postgres": stack.postgres.port,
            "redis": stack.redis.nodes[0].port,
            "broker": stack.broker.port,
        }
        lines = await asyncio.to_thread(stack.netlab.diagnose, ports)
        with path.open("a", encoding="utf-8") as out:
            out.write("network lab, each guest now:\n" + "\n".join(lines) + "\n\n")
    console.print(f"[red]stall report: {path}[/red]")


def _print_schedule(console: Console, options: ChaosOptions, events: Sequence[FaultEvent]) -> None:
    console.print(
        f"[bold]chaos[/bold] seed {options.seed}, {options.duration_s:g}s,"
        f" {len(events)} faults scheduled:"
    )
    for event in events:
        console.print(f"  {event.describe()}")


def _print_report(console: Console, report: CheckReport, options: ChaosOptions, path: Path) -> None:
    table = Table(title=f"chaos seed {options.seed}: what was checked", show_header=False)
    for name, count in sorted(report.counts.items()):
        table.add_row(name, str(count))
    table.add_row("violations", str(len(report.violations)))
    console.print(table)
    console.print(f"history: {path}")
    counts = report.counts
    console.print(
        f"checked: {counts['operations']} operations, {counts['accepted purchases (202)']}"
        f" accepted purchases, {counts['items']} items, {counts['faults']} faults,"
        f" {len(report.violations)} violations",
        highlight=False,
        soft_wrap=True,
    )
    if report.ok:
        console.print(
            f"[bold green]invariants hold[/bold green]: 0 violations in"
            f" {report.counts['operations']} operations, {report.counts['faults']} faults"
        )
        return
    for violation in report.violations:
        console.print(f"[bold red]VIOLATION[/bold red] {violation.describe()}", highlight=False)
    console.print(f"{len(report.violations)} violations; replay: {options.replay}")
