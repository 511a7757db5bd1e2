"""`flashsale bench`: the side-by-side benchmark, on a fresh stack it starts and stops itself.

Registered in infra/cli.py (LAZY_COMMANDS: imported only when run).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import uvloop
from rich.console import Console
from rich.status import Status

from infra.bench_tables import report_tables
from infra.durability import DURABILITY_LEVELS, FSYNC, durability_settings
from infra.failure import print_failure
from infra.lifecycle import stack_lifecycle
from infra.stack import EmbeddedStack
from loadtests.bench.context import LOCK_PAUSE_ROUNDS, PHASES, BenchConfig, StackAccess
from loadtests.bench.cpu import Parts, SystemProcesses, pids
from loadtests.bench.report import BenchResults, machine_description, report_json
from loadtests.bench.runner import run_bench
from services.errors import FlashsaleError
from services.settings import Settings

DEFAULT_REQUESTS = 50_000
DEFAULT_STOCK = 100
DEFAULT_CONCURRENCY = 256
DEFAULT_CLIENTS = 2
DEFAULT_CONSUMERS = 2
# Every simulated buyer comes from 127.0.0.1: with the per-address default of
# the gateway, most requests would measure the 429 path. The limiter still runs.
BENCH_CLIENT_RATE = "1000000/second"


@click.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout (see api.md)."
)
@click.option(
    "--requests",
    type=click.IntRange(10, 1_000_000),
    default=DEFAULT_REQUESTS,
    show_default=True,
    envvar="FLASHSALE_BENCH_REQUESTS",
    show_envvar=True,
    help="Purchase requests sent to each system, one buyer each.",
)
@click.option(
    "--stock",
    type=click.IntRange(1, 1_000_000),
    default=DEFAULT_STOCK,
    show_default=True,
    envvar="FLASHSALE_BENCH_STOCK",
    show_envvar=True,
    help="Units on sale in each system's flash sale.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 4096),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    envvar="FLASHSALE_BENCH_CONCURRENCY",
    show_envvar=True,
    help="Requests in flight at once (open connections), the same for every system.",
)
@click.option(
    "--clients",
    type=click.IntRange(1, 16),
    default=DEFAULT_CLIENTS,
    show_default=True,
    envvar="FLASHSALE_BENCH_CLIENTS",
    show_envvar=True,
    help="Load-generator processes sharing the requests and the connections.",
)
@click.option(
    "--gateways",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    envvar="FLASHSALE_BENCH_GATEWAYS",
    show_envvar=True,
    help="Gateway processes (SO_REUSEPORT), and as many processes of each baseline server.",
)
@click.option(
    "--consumers",
    type=click.IntRange(1, 64),
    default=DEFAULT_CONSUMERS,
    show_default=True,
    envvar="FLASHSALE_BENCH_CONSUMERS",
    show_envvar=True,
    help="flashsale consumer processes.",
)
@click.option(
    "--lock-rounds",
    type=click.IntRange(1, 100),
    default=LOCK_PAUSE_ROUNDS,
    show_default=True,
    envvar="FLASHSALE_BENCH_LOCK_ROUNDS",
    show_envvar=True,
    help="locks phase: pause rounds and failover rounds per design (one unit at most each).",
)
@click.option(
    "--durability",
    type=click.Choice(DURABILITY_LEVELS),
    default=FSYNC,
    show_default=True,
    envvar="FLASHSALE_BENCH_DURABILITY",
    show_envvar=True,
    help="Postgres durability for every system: fsync (Postgres' defaults), replicated"
    " (also a synchronous streaming standby), off (no fsync: a quick mode, not a shop's).",
)
@click.option(
    "--phases",
    default=",".join(PHASES),
    show_default=True,
    callback=lambda ctx, param, value: _phases(value),
    help="Run only these phases, comma-separated, of: " + ", ".join(PHASES) + ".",
)
def bench(
    as_json: bool,
    requests: int,
    stock: int,
    concurrency: int,
    clients: int,
    gateways: int,
    consumers: int,
    lock_rounds: int,
    durability: str,
    phases: frozenset[str],
) -> None:
    """Run the side-by-side benchmark on a fresh embedded stack, then stop it all.

    The same load generator sends REQUESTS purchases (one buyer each,
    CONCURRENCY in flight) for STOCK units to each system in turn:

    \b
      flashsale     the real gateway and consumers (Redis filter, Kafka, Postgres)
      redis_lock    SET NX PX lock per item around read/insert/update in Postgres
      redis_lock_queued  the same, with a process's requests queued locally first
      postgres_row  one conditional UPDATE on the item row per request
      bare_http     aiohttp answering 202 with no I/O: the ceiling

    Then: flashsale and postgres_row with stock for everyone (open_stock);
    a lock holder and a consumer stalled past their lease (lock_under_pause);
    the consumer's apply rate, batched and one purchase per transaction
    (apply); every lock design of the articles with the library its users
    pick (set_nx_px, watchdog, redlock, pg_advisory, etcd_lease,
    etcd_lease_fenced, flashsale), each in the spike, under a real SIGSTOP of
    the lock holder past its TTL and under a Redis failover (locks; it starts
    etcd and extra Redis servers of its own).

    The gateway's per-address rate limit is raised for the run (every buyer
    comes from 127.0.0.1); the limiter still runs. Progress goes to stderr;
    with --json stdout holds exactly one JSON object.
    The systems run one after the other in the same run, so compare the ratios
    more than the absolute figures on a busy machine.
    """
    console = Console(stderr=True)
    machine = machine_description()
    config = _Config(
        requests, stock, concurrency, clients, consumers, lock_rounds, phases, gateways, durability
    )
    try:
        results = _run(config, console)
    except FlashsaleError as exc:
        print_failure(console, "[bold red]bench failed:[/bold red]", exc)
        sys.exit(1)
    report = report_json(results, machine)
    report["gateways"] = gateways
    report["durability"] = durability
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        out = Console()
        for table in report_tables(report):
            out.print(table)


@dataclass(frozen=True, slots=True)
class _Config:
    requests: int
    stock: int
    concurrency: int
    clients: int
    consumers: int
    lock_rounds: int
    phases: frozenset[str]
    gateways: int = 1
    durability: str = FSYNC


def _phases(value: str) -> frozenset[str]:
    names = frozenset(name.strip() for name in value.split(",") if name.strip())
    unknown = names - set(PHASES)
    if unknown or not names:
        raise click.BadParameter(
            f"unknown phase(s) {', '.join(sorted(unknown)) or '(none)'}; choose from "
            + ", ".join(PHASES)
        )
    return names


def _run(config: _Config, console: Console) -> BenchResults:
    """Start the stack in a temporary folder, run every phase, stop everything."""
    settings = Settings.from_env(
        None,
        gateway_port=0,
        client_rate=BENCH_CLIENT_RATE,
        **durability_settings(config.durability),
    )
    root = Path(tempfile.mkdtemp(prefix="flashsale-bench-"))
    stack = EmbeddedStack(root, settings)

    def stop(ended: BaseException | None) -> None:
        with console.status("stopping everything the bench started"):
            stack.stop()
        # Asked to stop (Ctrl-C, SIGTERM): nothing to investigate.
        failed = ended is not None and not isinstance(ended, KeyboardInterrupt)
        _clean(root, keep_logs=failed, console=console)

    with stack_lifecycle(stop), console.status("starting the embedded stack") as status:
        say = _progress(console, status)
        stack.start_services(say)
        stack.start_processes(config.consumers, say, gateways=config.gateways)
        return uvloop.run(run_bench(_access(stack), _bench_config(config, stack), say))


def _access(stack: EmbeddedStack) -> StackAccess:
    # A standby's work is part of every commit at `replicated`: Postgres' share.
    postgres = [stack.postgres.pid(), *([stack.standby.pid()] if stack.standby else [])]

    def processes() -> Parts:
        # Read at each measurement: the rebalance phase changes the consumers.
        return {
            "gateway": SystemProcesses(single=pids(stack.gateway_pids)),
            "consumers": SystemProcesses(single=pids(stack.consumer_pids.values())),
            "redis": SystemProcesses(single=pids(stack.redis.pids)),
            "broker": SystemProcesses(single=pids([stack.broker.pid])),
            "postgres": SystemProcesses(forking=pids(postgres)),
        }

    return StackAccess(
        target=stack.stack_file().target(),
        processes=processes,
        scale=stack.scale_to,
        consumers=len(stack.consumer_pids),
        pgbench=stack.postgres.bin_dir / "pgbench",
        shared=SystemProcesses(single=pids(stack.redis.pids), forking=pids(postgres)),
    )


def _bench_config(config: _Config, stack: EmbeddedStack) -> BenchConfig:
    return BenchConfig(
        requests=config.requests,
        stock=config.stock,
        concurrency=config.concurrency,
        clients=config.clients,
        log_dir=stack.log_dir,
        phases=config.phases,
        lock_pause_rounds=config.lock_rounds,
        lock_failover_rounds=config.lock_rounds,
        server_processes=config.gateways,
    )


def _progress(console: Console, status: Status) -> Callable[[str], None]:
    started = time.monotonic()

    def say(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] {message}")
        status.update(message)

    return say


def _clean(root: Path, keep_logs: bool, console: Console) -> None:
    """Remove the temporary stack; after a failure keep its logs (not Postgres' data)."""
    if not keep_logs:
        shutil.rmtree(root, ignore_errors=True)
        return
    shutil.rmtree(root / "postgres" / "pgdata", ignore_errors=True)
    console.print(f"[yellow]logs kept in {root}[/yellow]")
