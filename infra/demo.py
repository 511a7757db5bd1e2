"""`flashsale demo` / `make demo`: a real flash sale on a fresh embedded stack.

The story, step by step: a sale window that opens (buyers before it get 409
not_started), the sell-out, cancellations that bring units back, holds that
are paid or expire, the returned units sold again, and the invariant check
over all of it (sold == confirmed + paid, the filter == stock - sold, an event
for every status change).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.demo_lifecycle import (
    admin_calls,
    early_buyers,
    opening_in,
    remaining,
    resell,
    rfc3339,
    wait_for_remaining,
    wait_until,
)
from infra.lifecycle import stack_lifecycle
from infra.stack import EmbeddedStack
from loadtests.checks.invariants import InvariantReport
from loadtests.checks.salecheck import SaleExpectations, check_sale
from loadtests.sale.admin import create_item
from loadtests.sale.sale import SaleOutcome, run_sale
from loadtests.sale.target import Target
from services.settings import Settings

DEMO_ITEM = "sku-demo"
HOLD_ITEM = "sku-demo-hold"
OPENS_IN_S = 3
OPEN_MARGIN = timedelta(seconds=0.2)
EARLY_BUYERS = 3
# Confirmed purchases of the sale item its buyers cancel.
CANCELS = 10
HOLD_STOCK = 20
HOLD_BUYERS = 100
# Long enough for the payment system to pay in time on a slow machine, short
# enough that the unpaid holds expire while one watches.
HOLD_S = 3
EXPIRY_WAIT_S = 30.0
STEPS = 6


@dataclass
class Story:
    """What the steps did, for the exit status and the final check."""

    sale: SaleOutcome = field(default_factory=SaleOutcome)
    accepted: list[str] = field(default_factory=list)
    not_started: int = 0
    cancelled: int = 0
    expired: int = 0
    sold_again: bool = True


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
            " (Postgres with fsync off: a throwaway demo; `flashsale bench` measures at fsync)"
        )
        target = stack.stack_file().target()
        story = asyncio.run(_story(console, target, buyers, stock))
        _step(console, STEPS, "the invariant check, over every step")
        expected = SaleExpectations(
            stock={DEMO_ITEM: stock, HOLD_ITEM: HOLD_STOCK},
            stock_filter=target.stock_filter,
            events=target.events,
        )
        report = asyncio.run(
            check_sale(settings.database_url, story.accepted, expected, clean_run=True)
        )
        _print_check(console, report)
        return (
            report.ok
            and story.sale.final.get("confirmed", 0) == min(stock, buyers)
            and story.not_started == EARLY_BUYERS
            and story.cancelled > 0
            and story.expired > 0
            and story.sold_again
        )


def _step(console: Console, number: int, text: str) -> None:
    console.print(f"\n[bold cyan]step {number}/{STEPS}[/bold cyan] {escape(text)}")


async def _story(console: Console, target: Target, buyers: int, stock: int) -> Story:
    story = Story()
    await _window(console, target, stock, story)
    story.sale = await _sale_with_progress(console, target, buyers, stock)
    story.accepted += story.sale.accepted
    _print_sale(console, story.sale, stock)
    # From the buyers' own final answers: a GET /v1/items right after them may
    # still answer from the gateway's 0.1 s view cache (a fresh-clone CI run
    # read 'remaining' before the last confirmations reached it).
    sold_out = story.sale.final.get("confirmed", 0) >= stock
    await _cancellations(console, target, story)
    await _holds(console, target, story)
    await _sold_again(console, target, story, sold_out)
    return story


async def _window(console: Console, target: Target, stock: int, story: Story) -> None:
    opens = opening_in(OPENS_IN_S)
    _step(console, 1, f"a sale window: {DEMO_ITEM} ({stock} units) opens at {rfc3339(opens)}")
    async with aiohttp.ClientSession() as session:
        await create_item(session, target, DEMO_ITEM, stock, starts_at=rfc3339(opens))
    for status, error, retry_after in await early_buyers(target, DEMO_ITEM, EARLY_BUYERS):
        console.print(f"  an early buyer: {status} {error}, Retry-After: {retry_after} s")
        story.not_started += status == 409 and error == "not_started"
    # A moment past the start: the gateway judges the window by its own clock.
    await wait_until(opens + OPEN_MARGIN)
    console.print("  [green]the sale is open[/green] (its stock filter was loaded in advance)")


async def _sale_with_progress(
    console: Console, target: Target, buyers: int, stock: int
) -> SaleOutcome:
    _step(console, 2, f"the sell-out: {buyers} buyers at once for {stock} units")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{buyers} buyers, {stock} units", total=buyers)
        return await run_sale(target, DEMO_ITEM, buyers, on_answer=lambda: progress.advance(task))


async def _cancellations(console: Console, target: Target, story: Story) -> None:
    confirmed = [pid for pid, s in story.sale.final_by_id.items() if s == "confirmed"]
    chosen = confirmed[:CANCELS]
    _step(console, 3, f"cancellations: {len(chosen)} buyers cancel their purchase")
    answers = await admin_calls(target, chosen, "cancel")
    story.cancelled = len(answers.done)
    console.print(f"  POST /v1/purchases/{{id}}/cancel: {answers.line() or 'none'}")
    back, _ = await wait_for_remaining(target, DEMO_ITEM, story.cancelled, EXPIRY_WAIT_S)
    console.print(f"  {DEMO_ITEM}: {back} units back on sale")


async def _holds(console: Console, target: Target, story: Story) -> None:
    _step(
        console,
        4,
        f"holds: {HOLD_ITEM} ({HOLD_STOCK} units) sells on hold, to be paid within {HOLD_S} s",
    )
    async with aiohttp.ClientSession() as session:
        await create_item(session, target, HOLD_ITEM, HOLD_STOCK, hold_s=HOLD_S)
    sale = await run_sale(target, HOLD_ITEM, HOLD_BUYERS)
    story.accepted += sale.accepted
    held = [pid for pid, s in sale.final_by_id.items() if s == "confirmed"]
    console.print(f"  {HOLD_BUYERS} buyers: {len(held)} units confirmed on hold")
    paid = await admin_calls(target, held[: len(held) // 2], "pay")
    console.print(f"  the payment system pays half: {paid.line() or 'none'}")
    unpaid = len(held) - len(paid.done)
    console.print(f"  nobody pays the other {unpaid}: waiting for pay_by to pass")
    back, took_s = await wait_for_remaining(target, HOLD_ITEM, unpaid, EXPIRY_WAIT_S)
    story.expired = back
    console.print(f"  {back} holds expired after {took_s:.1f} s: {back} units back on sale")
    late = await admin_calls(target, [pid for pid in held if pid not in paid.done][:1], "pay")
    console.print(f"  a payment after pay_by: {late.line() or 'none'}")


async def _sold_again(console: Console, target: Target, story: Story, sold_out: bool) -> None:
    _step(console, 5, "the returned units are sold again")
    for item_id, back in ((DEMO_ITEM, story.cancelled), (HOLD_ITEM, story.expired)):
        left = await remaining(target, item_id)
        if item_id == DEMO_ITEM and not sold_out:
            console.print(f"  {item_id} never sold out: its {left} units simply stay on sale")
            continue
        resale = await resell(target, item_id, left)
        story.accepted += resale.outcome.accepted
        confirmed = [pid for pid, s in resale.outcome.final_by_id.items() if s == "confirmed"]
        waves = " + ".join(str(n) for n in resale.confirmed)
        console.print(
            f"  {item_id}: {left} units on sale ({back} returned), {resale.buyers} new buyers"
            f" in {len(resale.confirmed)} wave(s): {waves} confirmed, {resale.remaining} left"
        )
        if resale.remaining:
            story.sold_again = False
        if item_id == HOLD_ITEM and confirmed:
            paid = await admin_calls(target, confirmed, "pay")
            console.print(f"  the payment system pays the new holds: {paid.line()}")


def _print_sale(console: Console, outcome: SaleOutcome, stock: int) -> None:
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


def _print_check(console: Console, report: InvariantReport) -> None:
    for tally in report.items:
        console.print(
            f"{tally.item_id}: stock {tally.stock}, sold {tally.sold}, "
            f"confirmed + paid {tally.confirmed_units}, rejected {tally.rejected}, "
            f"cancelled {tally.cancelled}, paid {tally.paid}, expired {tally.expired}"
        )
    if report.ok:
        console.print(
            "[bold green]invariants hold[/bold green]: no oversell, sold == confirmed + paid "
            "(nothing returned twice), every accepted purchase final, first come first served, "
            "returned units sold again or back in the filter, an event for every status change"
        )
    for violation in report.violations:
        console.print(f"[bold red]VIOLATION[/bold red] {escape(violation)}")
