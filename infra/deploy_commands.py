"""`flashsale migrate` and `flashsale sale`: for stacks the embedded one is not.

A deployment (infra/deploy: compose, Kubernetes) runs the schema migrations once
as a job before the gateways and consumers start, and runs a sale against its
load balancer. Both read the FLASHSALE_* settings from the environment like the
services do. Registered in `infra.cli` with `main.add_command(...)`; the heavy
imports wait until a command runs, so `flashsale --help` stays fast.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from loadtests.sale.sale import SaleOutcome
    from loadtests.sale.target import Target

EXIT_FAILED = 1


@click.command()
def migrate() -> None:
    """Bring the Postgres schema of FLASHSALE_DATABASE_URL up to date, then exit.

    Safe to run while other processes migrate (an advisory lock serialises them)
    and to run again (applied files are skipped). Gateways and consumers need the
    schema in place; a Kubernetes Job or a compose one-shot service runs this first.
    """
    from services.settings import Settings  # noqa: PLC0415

    settings = Settings.from_env()
    if not settings.database_url:
        raise click.UsageError("FLASHSALE_DATABASE_URL is not set")
    applied = asyncio.run(_migrate(settings.database_url))
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema up to date")


async def _migrate(database_url: str) -> list[str]:
    from services.store.db import open_pool  # noqa: PLC0415
    from services.store.migrate import migrate as run_migrations  # noqa: PLC0415

    pool = await open_pool(database_url, size=1)
    try:
        async with pool.acquire() as conn:
            return await run_migrations(conn)
    finally:
        await pool.close()


@click.command()
@click.option("--url", required=True, help="The gateways' address, e.g. http://localhost:8080.")
@click.option("--buyers", type=click.IntRange(1, 100_000), default=3000, show_default=True)
@click.option("--stock", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option("--item", "item_id", default="", help="Item id [default: a new sku-sale-*].")
def sale(url: str, buyers: int, stock: int, item_id: str) -> None:
    """Run one flash sale against a deployed stack, then check the invariants.

    Needs FLASHSALE_ADMIN_TOKEN and FLASHSALE_SECRET (to create the item and sign
    the buyers' tokens) and FLASHSALE_DATABASE_URL (the invariant check reads
    Postgres). Exit 0 when every accepted purchase is final and nothing oversold.
    """
    from loadtests.checks.invariants import check_invariants  # noqa: PLC0415
    from loadtests.sale.target import Target  # noqa: PLC0415
    from services.settings import Settings  # noqa: PLC0415

    settings = Settings.from_env()
    settings.require_secrets()
    item_id = item_id or f"sku-sale-{uuid.uuid4().hex[:8]}"
    target = Target(url.rstrip("/"), settings.admin_token, settings.secret)
    outcome = asyncio.run(_create_and_run(target, item_id, buyers, stock))
    report = asyncio.run(
        check_invariants(settings.database_url, [item_id], outcome.accepted, clean_run=True)
    )
    click.echo(f"item {item_id}: {buyers} buyers, {stock} units")
    for status, count in sorted(outcome.statuses.items()):
        click.echo(f"  answered {status or 'error'}: {count}")
    for state, count in sorted(outcome.final.items()):
        click.echo(f"  final {state}: {count}")
    click.echo(
        f"  latency p50 {outcome.percentile_ms(0.5):.1f} ms, "
        f"p99 {outcome.percentile_ms(0.99):.1f} ms; {outcome.elapsed_s:.1f} s"
    )
    click.echo("invariants: " + ("ok" if report.ok else "; ".join(report.violations)))
    confirmed = outcome.final.get("confirmed", 0)
    if not report.ok or confirmed != min(stock, buyers):
        sys.exit(EXIT_FAILED)


async def _create_and_run(target: Target, item_id: str, buyers: int, stock: int) -> SaleOutcome:
    import aiohttp  # noqa: PLC0415

    from loadtests.sale.admin import create_item  # noqa: PLC0415
    from loadtests.sale.sale import run_sale  # noqa: PLC0415

    async with aiohttp.ClientSession() as session:
        await create_item(session, target, item_id, stock)
    return await run_sale(target, item_id, buyers)
