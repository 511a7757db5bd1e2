"""The `flashsale` command: the operator's entry point and the composition root."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import click
from click.decorators import FC
from rich.console import Console

from infra import status as status_view
from infra.bench_command import bench
from infra.events_command import events
from infra.faults import FAULTS as CHAOS_FAULTS
from infra.loadtest_command import loadtest
from infra.stack import EmbeddedStack, stack_is_running, stop_from_file
from infra.stackfile import StackFile
from loadtests.workload import BUYERS_PER_S as CHAOS_BUYERS_PER_S
from loadtests.workload import ITEMS as CHAOS_ITEMS
from services.errors import FlashsaleError, StackNotRunningError, StackRunningError
from services.settings import Settings
from services.tokens import issue_token

console = Console(stderr=True)
DEFAULT_CONSUMERS = 2


def _state_dir_option() -> Callable[[FC], FC]:
    return click.option(
        "--state-dir",
        type=click.Path(path_type=Path),
        default=Path(".flashsale"),
        envvar="FLASHSALE_STATE_DIR",
        show_envvar=True,
        show_default=True,
        help="Folder for the embedded stack's data, logs and stack.json.",
    )


def _say(message: str) -> None:
    console.print(f"[dim]•[/dim] {message}")


def _fail(exc: BaseException) -> None:
    console.print(f"[bold red]error:[/bold red] {exc}")
    cause = exc.__cause__
    while cause is not None:
        console.print(f"  [red]caused by:[/red] {type(cause).__name__}: {cause}")
        cause = cause.__cause__
    sys.exit(1)


class FlashsaleGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FlashsaleError as exc:
            _fail(exc)
            return None


@click.group(cls=FlashsaleGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """flashsale: lock-free flash-sale inventory.

    A rate-limited gateway admits purchases through a sharded Redis stock filter
    onto a Kafka topic partitioned by item; consumers apply them in batches to
    Postgres, which makes overselling and double-applying impossible.
    """


@main.command()
@click.option(
    "--consumers",
    type=click.IntRange(0, 64),
    default=DEFAULT_CONSUMERS,
    envvar="FLASHSALE_CONSUMERS",
    show_envvar=True,
    show_default=True,
    help="Consumer processes to start (useful up to the partition count).",
)
@click.option(
    "--redis-cluster",
    is_flag=True,
    envvar="FLASHSALE_REDIS_CLUSTER",
    show_envvar=True,
    help="Run a 3-master Redis Cluster instead of one node.",
)
@click.option(
    "--detach",
    is_flag=True,
    envvar="FLASHSALE_DETACH",
    show_envvar=True,
    help="Return once everything is ready; stop it with `flashsale down`.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    envvar="FLASHSALE_GATEWAY_PORT",
    show_envvar=True,
    show_default=True,
    help="Gateway port (0 or busy: a free one).",
)
@click.option(
    "--gateways",
    type=click.IntRange(1, 16),
    default=1,
    envvar="FLASHSALE_GATEWAYS",
    show_envvar=True,
    show_default=True,
    help="Gateway processes sharing the port (one per core is plenty).",
)
@_state_dir_option()
def up(
    consumers: int, redis_cluster: bool, detach: bool, port: int, gateways: int, state_dir: Path
) -> None:
    """Start the embedded stack (Postgres, Redis, broker), the gateway and N consumers."""
    _refuse_second_stack(state_dir)
    settings = Settings.from_env(
        gateway_port=port, state_dir=state_dir, redis_cluster=redis_cluster
    )
    stack = EmbeddedStack(state_dir, settings, redis_cluster=redis_cluster)
    interrupted = _StopFlag()
    try:
        with interrupted.catching():
            stack.start_services(_say)
            stack.start_processes(consumers, _say, gateways=gateways)
            stack_file = stack.stack_file()
            stack_file.supervisor_pid = None if detach else os.getpid()
            path = stack_file.save(state_dir)
    except BaseException as exc:
        console.print("[yellow]start failed or interrupted; stopping what was started[/yellow]")
        stack.stop(_say)
        StackFile.remove(state_dir)
        if isinstance(exc, FlashsaleError):
            raise
        sys.exit(130)
    _print_ready(stack_file, path)
    if detach:
        return
    console.print("[bold]running; Ctrl-C stops everything[/bold]")
    interrupted.wait()
    stack.stop(_say)
    StackFile.remove(state_dir)
    console.print("[green]stopped[/green]")


def _refuse_second_stack(state_dir: Path) -> None:
    try:
        existing = StackFile.load(state_dir)
    except StackNotRunningError:
        return
    if stack_is_running(existing):
        raise StackRunningError(
            f"a stack is already running from {state_dir} (gateway {existing.gateway_url}); "
            "run `flashsale down` first"
        )
    StackFile.remove(state_dir)


def _print_ready(stack_file: StackFile, path: Path) -> None:
    out = Console()
    out.print(f"[green]ready[/green]  gateway {stack_file.gateway_url}")
    out.print(f"admin token: {stack_file.admin_token}")
    out.print(f"stack file:  {path}")


class _StopFlag:
    """SIGINT/SIGTERM flip a flag instead of raising in the middle of a start."""

    def __init__(self) -> None:
        self.stopping = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        raise KeyboardInterrupt

    def catching(self) -> _SignalScope:
        return _SignalScope(self._handler)

    def wait(self) -> None:
        with self.catching():
            try:
                while True:
                    signal.pause()
            except KeyboardInterrupt:
                pass


class _SignalScope:
    def __init__(self, handler: signal.Handlers | object) -> None:
        self.handler = handler
        self.previous: list[object] = []

    def __enter__(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous.append(signal.signal(sig, self.handler))  # type: ignore[arg-type]

    def __exit__(self, *exc: object) -> None:
        for sig, previous in zip((signal.SIGINT, signal.SIGTERM), self.previous, strict=True):
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self.previous.clear()


@main.command()
@_state_dir_option()
def down(state_dir: Path) -> None:
    """Stop what `flashsale up` started. Postgres' data stays on disk."""
    stack_file = StackFile.load(state_dir)
    left = stop_from_file(state_dir, stack_file, _say)
    StackFile.remove(state_dir)
    if left:
        raise FlashsaleError(f"processes still alive after stopping: {left}")
    Console().print("[green]stopped[/green]")


@main.command()
@click.argument("user_ids", metavar="USER_ID...", nargs=-1, required=True)
@click.option(
    "--ttl",
    type=click.IntRange(1),
    default=None,
    envvar="FLASHSALE_TOKEN_TTL_S",
    show_envvar=True,
    help="Seconds the token stays valid (default: 24 h).",
)
@_state_dir_option()
def token(user_ids: tuple[str, ...], ttl: int | None, state_dir: Path) -> None:
    """Print a user token per USER_ID, one per line in order, signed with the
    gateway's secret (from FLASHSALE_SECRET or the running stack's state folder)."""
    settings = Settings.from_env()
    settings = settings.replace(secret=settings.secret or StackFile.load(state_dir).secret)
    settings.require_signing_secret()
    expiry_s = ttl or settings.token_ttl_s
    tokens = [issue_token(settings.secret, user_id, expiry_s) for user_id in user_ids]
    click.echo("\n".join(tokens))


@main.command()
@_state_dir_option()
def status(state_dir: Path) -> None:
    """Items (stock, sold, remaining), partitions (owner, lag), consumers, throughput."""
    stack_file = StackFile.load(state_dir)
    asyncio.run(status_view.show(stack_file, Console()))


@main.group()
def consumers() -> None:
    """Operate the consumer processes of a running stack."""


@consumers.command("scale")
@click.argument("count", type=click.IntRange(0, 64))
@_state_dir_option()
def scale(count: int, state_dir: Path) -> None:
    """Grow or shrink the running consumers to COUNT, live."""
    from infra.scaling import scale_consumers  # noqa: PLC0415

    scale_consumers(state_dir, count, _say)


@main.command()
@click.option(
    "--buyers",
    type=click.IntRange(1, 100_000),
    default=3000,
    show_default=True,
    envvar="FLASHSALE_DEMO_BUYERS",
    show_envvar=True,
    help="Concurrent buyers.",
)
@click.option(
    "--stock",
    type=click.IntRange(1, 1_000_000),
    default=100,
    show_default=True,
    envvar="FLASHSALE_DEMO_STOCK",
    show_envvar=True,
    help="Units on sale.",
)
@click.option(
    "--consumers",
    "consumer_count",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    envvar="FLASHSALE_DEMO_CONSUMERS",
    show_envvar=True,
    help="Consumer processes.",
)
def demo(buyers: int, stock: int, consumer_count: int) -> None:
    """Run a flash sale end to end on a fresh embedded stack, then check the invariants."""
    from infra.demo import run_demo  # noqa: PLC0415

    ok = run_demo(buyers=buyers, stock=stock, consumers=consumer_count, console=Console())
    sys.exit(0 if ok else 1)


@main.command()
@click.option(
    "--duration",
    type=click.FloatRange(1, 86400),
    default=30.0,
    show_default=True,
    envvar="FLASHSALE_CHAOS_DURATION",
    show_envvar=True,
    help="Seconds of buying while faults are injected.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    envvar="FLASHSALE_CHAOS_SEED",
    show_envvar=True,
    help="Seed of the fault schedule and the workload (default: random, printed for replay).",
)
@click.option(
    "--items",
    type=click.IntRange(1, 100_000),
    default=CHAOS_ITEMS,
    show_default=True,
    envvar="FLASHSALE_CHAOS_ITEMS",
    show_envvar=True,
    help="Items on sale, with skewed (Zipf-like) popularity.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0.1, 1000),
    default=CHAOS_BUYERS_PER_S,
    show_default=True,
    envvar="FLASHSALE_CHAOS_RATE",
    show_envvar=True,
    help="New buyers per second (each retries, polls, maybe re-sends its key).",
)
@click.option(
    "--faults",
    default=",".join(CHAOS_FAULTS),
    show_default=True,
    envvar="FLASHSALE_CHAOS_FAULTS",
    show_envvar=True,
    help="Comma-separated fault kinds the schedule may pick from.",
)
@_state_dir_option()
def chaos(
    duration: float, seed: int | None, items: int, rate: float, faults: str, state_dir: Path
) -> None:
    """Run a sale on a fresh stack under a random schedule of faults, then check invariants.

    Faults: kill -9 and SIGSTOP (past the session timeout) of a consumer or a
    gateway, broker restart (its log is lost), Redis restart (its data is lost),
    Postgres restart, a consumer added or removed, the whole stack down and up
    (Postgres data kept). Every client operation and fault window is written to
    a history under STATE_DIR/chaos/; the checker reads it and Postgres and
    names every violation. Exit 1 when an invariant broke; the schedule is
    printed first, so a run can be replayed with the same seed.
    """
    from infra.chaos import ChaosOptions, run_chaos  # noqa: PLC0415

    kinds = tuple(kind.strip() for kind in faults.split(",") if kind.strip())
    unknown = sorted(set(kinds) - set(CHAOS_FAULTS))
    if unknown:
        raise click.BadParameter(f"unknown fault kinds {unknown}", param_hint="--faults")
    options = ChaosOptions(
        duration_s=duration,
        seed=seed if seed is not None else secrets.randbelow(1_000_000),
        state_dir=state_dir,
        items=items,
        buyers_per_s=rate,
        faults=kinds,
    )
    sys.exit(0 if run_chaos(options, Console()) else 1)


main.add_command(loadtest)
main.add_command(bench)
main.add_command(events)

if __name__ == "__main__":
    main()
