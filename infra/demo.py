"""`flashsale demo` / `make demo`: a real flash sale on a fresh embedded stack."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.lifecycle import stack_lifecycle
from infra.stack import EmbeddedStack
from loadtests.invariants import InvariantReport, check_invariants
from loadtests.sale import SaleOutcome, SaleTarget, create_item, run_sale
from services.settings import Settings

DEMO_ITEM = "sku-demo"


def run_demo(buyers: int, stock: int, consumers: int, console: Console) -> bool:
    root = Path(tempfile.mkdtemp(prefix="flashsale-demo-"))
    stack = EmbeddedStack(root, Settings.from_env(gateway_port=0, postgres_fsync=False))

    def stop(ended: BaseException | None) -> None:
        with console.status("stopping the stack"):
            stack.stop()
        shutil.rmtree(root, ignore_errors=True)
        console.print("[dim]stack stopped; nothing left running[/dim]")

    with stack_lifecycle(stop):
        with console.status("starting the embedded stack") as spinner:
            stack.start_services(spinner.update)
            stack.start_processes(consumers, spinner.update)
        settings = stack.settings
        console.print(
            f"[green]stack ready[/green]: gateway http://127.0.0.1:{settings.gateway_port}, "
            f"{consumers} consumers, {settings.partitions} partitions"
        )
        target = SaleTarget(
            f"http://127.0.0.1:{settings.gateway_port}", settings.admin_token, settings.secret
        )
        outcome = _sale_with_progress(console, target, buyers, stock)
        report = asyncio.run(
            check_invariants(settings.database_url, [DEMO_ITEM], outcome.accepted, clean_run=True)
        )
        _print_results(console, outcome, report, stock)
        return report.ok and outcome.final.get("confirmed", 0) == min(stock, buyers)


def _sale_with_progress(
    console: Console, target: SaleTarget, buyers: int, stock: int
) -> SaleOutcome:
    async def sale() -> SaleOutcome:
        import aiohttp  # noqa: PLC0415

        async with aiohttp.ClientSession() as session:
            await create_item(session, target, DEMO_ITEM, stock)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(f"{buyers} buyers, {stock} units", total=buyers)
            return await run_sale(
                target, DEMO_ITEM, buyers, on_answer=lambda: progress.advance(task)
            )

    return asyncio.run(sale())


def _print_results(
    console: Console, outcome: SaleOutcome, report: InvariantReport, stock: int
) -> None:
    table = Table(title="flash sale", show_header=False)
    table.add_row("requests", str(outcome.requests))
    for status, count in sorted(outcome.statuses.items()):
        table.add_row(f"answered {status or 'error'}", str(count))
    for state, count in sorted(outcome.final.items()):
        table.add_row(f"final {state}", str(count))
    table.add_row("stock", str(stock))
    sellout = "-" if outcome.sellout_s is None else f"{outcome.sellout_s:.2f} s"
    table.add_row("time to sell out", sellout)
    table.add_row(
        "p50 / p99 latency",
        f"{outcome.percentile_ms(0.5):.1f} / {outcome.percentile_ms(0.99):.1f} ms",
    )
    table.add_row("answered per second", f"{outcome.requests / max(outcome.elapsed_s, 1e-9):.0f}")
    console.print(table)
    for tally in report.items:
        console.print(
            f"{tally.item_id}: stock {tally.stock}, sold {tally.sold}, "
            f"confirmed {tally.confirmed_units}, rejected {tally.rejected}"
        )
    if report.ok:
        console.print(
            "[bold green]invariants hold[/bold green]: no oversell, sold == confirmed, "
            "every accepted purchase final, first come first served"
        )
    for violation in report.violations:
        console.print(f"[bold red]VIOLATION[/bold red] {violation}")
