"""The `flashsale` command: the operator's entry point and the composition root.

It starts fast: this module imports only click, and each command imports what
it needs when it runs (`flashsale token` never loads the Kafka, Redis or HTTP
clients; `bench`, `loadtest` and `chaos` live in modules loaded on use).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from infra.cli_options import state_dir_option
from infra.lazygroup import LazyGroup
from infra.stackfile import StackFile, stack_lock
from services.errors import FlashsaleError

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_CONSUMERS = 2
# Subcommands whose modules are heavy: name -> (module:command, --help line).
LAZY_COMMANDS = {
    "bench": ("infra.bench_command:bench", "Run the side-by-side benchmark on a fresh stack."),
    "chaos": ("infra.chaos_command:chaos", "Run a sale under random faults, then check..."),
    "events": ("infra.events_command:events", "Purchase events: `events tail` prints them."),
    "loadtest": ("infra.loadtest_command:loadtest", "Run a Locust scenario against the stack."),
    "migrate": ("infra.deploy_commands:migrate", "Apply the schema migrations (deployments)."),
    "sale": ("infra.deploy_commands:sale", "Run a checked sale against a deployed stack."),
}


@functools.cache
def _err() -> Console:
    from rich.console import Console  # noqa: PLC0415

    return Console(stderr=True)


def _out() -> Console:
    from rich.console import Console  # noqa: PLC0415

    return Console()


def _say(message: str) -> None:
    _err().print(f"[dim]•[/dim] {message}")


def _warn(message: str) -> None:
    _err().print(f"[bold yellow]warning:[/bold yellow] {message}")


def _fail(exc: BaseException) -> None:
    from infra.failure import print_failure  # noqa: PLC0415

    print_failure(_err(), "[bold red]error:[/bold red]", exc)
    sys.exit(1)


class FlashsaleGroup(LazyGroup):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FlashsaleError as exc:
            _fail(exc)
            return None


@click.group(
    cls=FlashsaleGroup,
    lazy_commands=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
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
@state_dir_option()
def up(
    consumers: int, redis_cluster: bool, detach: bool, port: int, gateways: int, state_dir: Path
) -> None:
    """Start the embedded stack (Postgres, Redis, broker), the gateway and N consumers."""
    from infra.up import run_up  # noqa: PLC0415
    from services.settings import Settings  # noqa: PLC0415

    settings = Settings.from_env(
        gateway_port=port, state_dir=state_dir, redis_cluster=redis_cluster
    )
    if consumers > settings.partitions:
        _warn(f"{consumers} consumers for {settings.partitions} partitions: some will sit idle")
    run_up(settings, consumers, gateways, detach, _say, _err(), _out())


@main.command()
@state_dir_option()
def down(state_dir: Path) -> None:
    """Stop what `flashsale up` started. Postgres' data stays on disk."""
    from infra.stack import stop_from_file  # noqa: PLC0415

    # Under the lock: a `consumers scale` running now finishes first, and the
    # consumers it started are in stack.json when we read it.
    with stack_lock(state_dir):
        stack_file = StackFile.load(state_dir)
        left = stop_from_file(state_dir, stack_file, _say)
        StackFile.remove(state_dir)
    if left:
        raise FlashsaleError(f"processes still alive after stopping: {left}")
    _out().print("[green]stopped[/green]")


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
@state_dir_option()
def token(user_ids: tuple[str, ...], ttl: int | None, state_dir: Path) -> None:
    """Print a user token per USER_ID, one per line in order, signed with the
    gateway's secret (from FLASHSALE_SECRET or the running stack's state folder)."""
    from services.settings import Settings  # noqa: PLC0415
    from services.tokens import issue_token  # noqa: PLC0415

    settings = Settings.from_env()
    settings = settings.replace(secret=settings.secret or StackFile.load(state_dir).secret)
    settings.require_signing_secret()
    expiry_s = ttl or settings.token_ttl_s
    tokens = [issue_token(settings.secret, user_id, expiry_s) for user_id in user_ids]
    click.echo("\n".join(tokens))


@main.command()
@click.option(
    "--watch",
    is_flag=True,
    help="Refresh in place until Ctrl-C.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.2, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option(
    "--count",
    type=click.IntRange(1),
    default=None,
    help="With --watch: stop after this many refreshes.",
)
@click.option(
    "--items",
    "item_rows",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Item rows shown (on sale now, most active first); the rest are counted.",
)
@state_dir_option()
def status(
    watch: bool, interval: float, count: int | None, item_rows: int, state_dir: Path
) -> None:
    """Items (stock, sold, remaining), partitions (owner, lag), consumers, throughput."""
    import asyncio  # noqa: PLC0415

    from infra import status as status_view  # noqa: PLC0415

    stack_file = StackFile.load(state_dir)
    if watch:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
            asyncio.run(status_view.watch(stack_file, _out(), item_rows, interval, count))
    else:
        asyncio.run(status_view.show(stack_file, _out(), item_rows))


@main.group()
def consumers() -> None:
    """Operate the consumer processes of a running stack."""


@consumers.command("scale")
@click.argument("count", type=click.IntRange(0, 64))
@state_dir_option()
def scale(count: int, state_dir: Path) -> None:
    """Grow or shrink the running consumers to COUNT, live."""
    from infra.scaling import scale_consumers  # noqa: PLC0415

    scale_consumers(state_dir, count, _say, _warn)


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
    """Run a flash sale end to end on a fresh embedded stack, then check the invariants.

    \b
    Step by step: a sale window that opens (early buyers get 409 not_started), the
    sell-out, cancellations and expiring holds bringing units back, those units
    sold again, and the invariant check over all of it. Exit 0 when every step
    did what it says and every invariant held."""
    from infra.demo import run_demo  # noqa: PLC0415

    ok = run_demo(buyers=buyers, stock=stock, consumers=consumer_count, console=_out())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
