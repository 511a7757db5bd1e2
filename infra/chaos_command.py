"""`flashsale chaos`: a sale on a fresh stack under a random schedule of faults.

Its own module so that other commands do not import the fault injector.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import click
from rich.console import Console

from infra.chaos import ChaosOptions, run_chaos
from infra.cli_options import state_dir_option
from infra.faults import FAULTS as CHAOS_FAULTS
from loadtests.chaos.workload import BUYERS_PER_S as CHAOS_BUYERS_PER_S
from loadtests.chaos.workload import ITEMS as CHAOS_ITEMS


@click.command()
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
@state_dir_option()
def chaos(
    duration: float, seed: int | None, items: int, rate: float, faults: str, state_dir: Path
) -> None:
    """Run a sale on a fresh stack under a random schedule of faults, then check invariants.

    Faults: kill -9 and SIGSTOP (past the session timeout) of a consumer or a
    gateway, broker restart (its log is lost), Redis restart (its data is lost),
    Postgres restart, a consumer added or removed, the whole stack down and up
    (Postgres data kept), and network partitions: a consumer, in a network
    namespace of its own, cut off from the broker but not Postgres, or from
    Postgres but not the broker, or squeezed through a thin link (these need
    root; without it they are left out and the run says so). Every client
    operation and fault window is written to a history under STATE_DIR/chaos/;
    the checker reads it and Postgres and names every violation. Exit 1 when
    an invariant broke; the schedule is printed first, so a run can be
    replayed with the same seed.
    """
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
