"""`flashsale loadtest`: a Locust scenario against the running stack, then the invariant check.

Registered in `infra.cli` (LAZY_COMMANDS: imported only when run); runs on its own too.
Progress goes to stderr, the summary table to stdout.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.failure import print_failure
from infra.stackfile import StackFile
from loadtests.loadtest.plans import DEFAULT_DURATION_S, DEFAULT_USERS
from loadtests.loadtest.runner import LoadtestError, LoadtestSummary, run_loadtest
from loadtests.sale.target import Target
from loadtests.scenarios import SCENARIOS
from services.errors import StackNotRunningError

EXIT_VIOLATION = 1
EXIT_COULD_NOT_RUN = 3
READY_TIMEOUT_S = 5.0
RUNS_FOLDER = "loadtests"
MAX_USERS = 20_000
MAX_DURATION_S = 3600
MAX_PROCESSES = 64
DEFAULT_STATE_DIR = Path(".flashsale")

USERS_HELP = (
    "Concurrent Locust users, all started within the first second. Each one runs "
    "buyer after buyer (a new user id and key each time), so a run sees far more "
    "buyers than users.  [default: "
    + ", ".join(f"{name} {count}" for name, count in DEFAULT_USERS.items())
    + "]"
)


class _RichProgress:
    """The runner's progress as a bar over the run time, then one line per phase."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task: TaskID | None = None
        self.finished = False

    def phase(self, text: str) -> None:
        self.console.print(f"[dim]•[/dim] {escape(text)}")

    def load(self, elapsed_s: float, duration_s: float) -> None:
        if self.finished or not self.console.is_terminal:
            return  # a bar redrawn into a log file is noise
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("load", total=duration_s)
        self.bar.update(self.task, completed=elapsed_s)
        if elapsed_s >= duration_s:
            self.done()

    def done(self) -> None:
        if self.task is not None and not self.finished:
            self.bar.stop()
        self.finished = True


def _target(state_dir: Path) -> Target:
    """The running stack's addresses; a usage error (exit 2) when there is none."""
    where = "" if state_dir == DEFAULT_STATE_DIR else f" --state-dir {state_dir}"
    hint = f"run `flashsale up --detach{where}` first"
    try:
        stack = StackFile.load(state_dir)
    except StackNotRunningError as exc:
        raise click.UsageError(f"no running stack in {state_dir}: {hint}") from exc
    try:
        with urllib.request.urlopen(stack.gateway_url + "/readyz", timeout=READY_TIMEOUT_S):
            pass
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise click.UsageError(
            f"the stack in {state_dir} does not answer at {stack.gateway_url}/readyz ({exc}): "
            f"{hint}"
        ) from exc
    return stack.target()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scenario", type=click.Choice(SCENARIOS))
@click.option(
    "--users",
    type=click.IntRange(1, MAX_USERS),
    default=None,
    envvar="FLASHSALE_LOADTEST_USERS",
    show_envvar=True,
    help=USERS_HELP,
)
@click.option(
    "--duration",
    type=click.IntRange(1, MAX_DURATION_S),
    default=DEFAULT_DURATION_S,
    envvar="FLASHSALE_LOADTEST_DURATION",
    show_envvar=True,
    show_default=True,
    help="Seconds of load. Then users get 5 s to finish, and the check waits up to "
    "30 s for every accepted purchase to be final.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_STATE_DIR,
    envvar="FLASHSALE_STATE_DIR",
    show_envvar=True,
    show_default=True,
    help="Folder of the running stack (its stack.json); run files go to its loadtests/.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, MAX_PROCESSES),
    default=None,
    envvar="FLASHSALE_LOADTEST_PROCESSES",
    show_envvar=True,
    help="Locust processes generating the load: one Locust process is one core at most. "
    "Above 1, Locust forks that many workers under a master of its own and they share "
    f"the users.  [default: the CPU cores, {os.cpu_count() or 1} here]",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def loadtest(
    scenario: str,
    users: int | None,
    duration: int,
    state_dir: Path,
    processes: int | None,
    as_json: bool,
) -> None:
    """Run a Locust SCENARIO headless against the running stack, then check the invariants.

    \b
    spike        crowds of distinct buyers, one try each, for one item of 100 units
    retry-storm  clients time out and retry with the same Idempotency-Key, sometimes
                 twice at once: every retry must name the same purchase, once in Postgres
    multi-item   50 items, Zipf-like popularity, stocks from 5 to 2000, per-user limits
    abusive      bad input (broken JSON, wrong content type, bad keys, forged tokens,
                 others' purchase ids...) and one user hammering, mixed into real
                 buying: bad input must get 4xx and change nothing
    cancellations  buyers cancel a share of their purchases while the sale runs; holds
                 of 2 s are paid in time, paid late (409 expired) or left to expire:
                 every returned unit must be sold again or be back in the filter

    \b
    The check: no oversell, sold == confirmed + paid units (nothing returned twice),
    every accepted purchase final (waiting up to 30 s) and every hold paid or expired,
    first come first served, per-user limits, stock unchanged, the stock filter ==
    stock - sold (returned units sold again or back on sale), an event published for
    every status change, plus the scenario's own rules. 409 sold_out, 429 rate_limited
    and 503 are answers a sale may give, not failures.

    \b
    Exit status: 0 every invariant holds; 1 an invariant broke; 2 usage error (no
    running stack: `flashsale up --detach` first); 3 the load test could not run.
    """
    err = Console(stderr=True)
    target = _target(state_dir)
    progress = _RichProgress(err)
    try:
        summary = run_loadtest(
            target,
            scenario,
            users or DEFAULT_USERS[scenario],
            duration,
            state_dir / RUNS_FOLDER,
            progress,
            processes or os.cpu_count() or 1,
        )
    except LoadtestError as exc:
        progress.done()
        print_failure(err, "[bold red]load test could not run:[/bold red]", exc)
        sys.exit(EXIT_COULD_NOT_RUN)
    if as_json:
        click.echo(json.dumps(summary.as_json()))
    else:
        print_summary(Console(), summary)
    sys.exit(0 if summary.ok else EXIT_VIOLATION)


def print_summary(console: Console, summary: LoadtestSummary) -> None:
    console.print(_overview(summary))
    console.print(_answers(summary))
    console.print(_endpoints(summary))
    if summary.ok:
        console.print(
            "[bold green]invariants hold[/bold green]: no oversell, sold == confirmed + paid, "
            "every accepted purchase final, first come first served, per-user limits, "
            f"filter == stock - sold, every event published, {summary.scenario} rules"
        )
    for violation in summary.violations:
        console.print(f"[bold red]VIOLATION[/bold red] {escape(violation)}")
    console.print(f"[dim]Locust reports and results: {summary.folder}[/dim]")


def _overview(summary: LoadtestSummary) -> Table:
    table = Table(title=f"flashsale loadtest {summary.scenario}", show_header=False)
    table.add_row(
        "users / Locust processes / run time",
        f"{summary.users} / {summary.processes} / {summary.duration_s} s",
    )
    table.add_row("requests", f"{summary.requests} ({summary.requests_per_s:.0f}/s)")
    table.add_row("buyers", str(summary.results.buyers))
    table.add_row("no answer (client timeout, connection error)", str(summary.unanswered))
    table.add_row("accepted (202)", str(len(set(summary.results.accepted))))
    table.add_row(
        "confirmed units / stock",
        f"{summary.confirmed_units} / {summary.stock} ({len(summary.items)} items)",
    )
    table.add_row("rejected after acceptance", str(summary.rejected))
    moved = {status: summary.moved_on(status) for status in ("cancelled", "paid", "expired")}
    if any(moved.values()):
        table.add_row(
            "cancelled / paid / expired",
            " / ".join(str(n) for n in moved.values())
            + f" ({summary.returned_units} units returned)",
        )
    table.add_row(
        "purchase p50 / p99",
        f"{summary.buy_latency_ms(0.5):.0f} / {summary.buy_latency_ms(0.99):.0f} ms",
    )
    finals = ", ".join(f"{state} {n}" for state, n in sorted(summary.results.finals.items()))
    table.add_row("final states polled", finals or "-")
    return table


def _answers(summary: LoadtestSummary) -> Table:
    table = Table(title="answers by status")
    table.add_column("request")
    table.add_column("answers")
    for name, counts in sorted(summary.results.answers.items()):
        shown = ", ".join(f"{label}: {n}" for label, n in sorted(counts.items()))
        table.add_row(escape(name), shown)
    return table


def _endpoints(summary: LoadtestSummary) -> Table:
    table = Table(title="Locust statistics")
    for column in ("request", "count", "failures", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "request" else "right")
    for entry in summary.endpoints:
        name = entry.name if entry.name.startswith(entry.method) else f"{entry.method} {entry.name}"
        table.add_row(
            escape(name),
            str(entry.requests),
            str(entry.failures),
            f"{entry.p50_ms:.0f}",
            f"{entry.p99_ms:.0f}",
        )
    return table
