"""`flashsale status`: one screen an operator reads during a sale, once or refreshed in place.

It reads Postgres and the broker only (no Redis, no HTTP client), so it starts fast.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Column, Table
from rich.text import Text

from infra.stackfile import StackFile
from services.errors import UnavailableError
from services.settings import Settings
from services.store.db import open_pool
from services.store.leases import LeaseRow, list_leases
from services.store.status import ActiveItem, ItemCounts, active_items, applied_since, item_counts
from services.topics import end_offsets

THROUGHPUT_WINDOW_S = 10
POOL_SIZE = 2


@dataclass(frozen=True, slots=True)
class Snapshot:
    items: list[ActiveItem]
    counts: ItemCounts
    leases: list[LeaseRow]
    ends: dict[int, int]
    applied: int
    at: float


async def take_snapshot(pool: asyncpg.Pool, settings: Settings, item_rows: int) -> Snapshot:
    items = await active_items(pool, THROUGHPUT_WINDOW_S, item_rows)
    counts = await item_counts(pool, THROUGHPUT_WINDOW_S)
    # Only the stack's partitions: rows beyond them are left from a larger topic.
    leases = await list_leases(pool, settings.topic, settings.partitions)
    applied = await applied_since(pool, THROUGHPUT_WINDOW_S)
    try:
        ends = await end_offsets(
            settings.kafka_bootstrap, settings.topic, [lease.partition for lease in leases]
        )
    except UnavailableError:
        ends = {}
    return Snapshot(items, counts, leases, ends, applied, time.time())


def render(stack: StackFile, snap: Snapshot) -> RenderableType:
    header = Text(
        f"gateway {stack.gateway_url}   {time.strftime('%H:%M:%S', time.localtime(snap.at))}"
    )
    items = Table("item", "stock", "sold", "remaining", "per user", "applied/s", title="items")
    for active in snap.items:
        item = active.item
        items.add_row(
            item.item_id,
            str(item.stock),
            str(item.sold),
            str(item.remaining),
            str(item.per_user_limit),
            f"{active.applied / THROUGHPUT_WINDOW_S:.1f}",
        )
    not_shown = snap.counts.total - len(snap.items)
    rest = Text(
        f"{snap.counts.on_sale} on sale now, {len(snap.items)} shown; "
        f"{not_shown} other item(s) not shown",
        style="dim",
    )
    parts = Table(
        "partition", Column("owner", no_wrap=True), "epoch", "next", "end", "lag", "log gen",
        title="partitions (offsets: next to apply, end of the log)",
    )  # fmt: skip
    total_lag = 0
    for lease in snap.leases:
        end = snap.ends.get(lease.partition)
        lag = None if end is None else max(end - lease.next_offset, 0)
        total_lag += lag or 0
        parts.add_row(
            str(lease.partition),
            lease.owner or "-",
            str(lease.epoch),
            str(lease.next_offset),
            "?" if end is None else str(end),
            "?" if lag is None else str(lag),
            str(lease.log_generation),
        )
    procs = Table(Column("consumer", no_wrap=True), "pid", "alive", title="consumers")
    for name, pid in zip(stack.consumer_names, stack.pids.consumers, strict=False):
        procs.add_row(name, str(pid), "yes" if stack.is_ours(pid) else "no")
    footer = Text(
        f"throughput: {snap.applied / THROUGHPUT_WINDOW_S:.1f} purchases/s applied "
        f"(last {THROUGHPUT_WINDOW_S}s); total lag {total_lag}"
    )
    return Group(header, items, rest, parts, procs, footer)


async def show(stack: StackFile, console: Console, item_rows: int) -> None:
    settings = stack.settings()
    pool = await open_pool(settings.database_url, POOL_SIZE)
    try:
        snap = await take_snapshot(pool, settings, item_rows)
    finally:
        await pool.close()
    console.print(render(stack, snap))


async def watch(
    stack: StackFile, console: Console, item_rows: int, interval_s: float, count: int | None
) -> None:
    """Redraw in place every `interval_s` until Ctrl-C (or `count` refreshes).

    A backing service down shows as a line on the screen, not as an exit: the
    operator is watching precisely because something may go wrong."""
    settings = stack.settings()
    pool = await open_pool(settings.database_url, POOL_SIZE)
    refreshes = 0
    try:
        with Live(Text("reading..."), console=console, auto_refresh=False) as live:
            while count is None or refreshes < count:
                try:
                    view = render(stack, await take_snapshot(pool, settings, item_rows))
                except UnavailableError as exc:
                    view = Text(f"unavailable: {exc}", style="bold red")
                live.update(view, refresh=True)
                refreshes += 1
                if count is None or refreshes < count:
                    await asyncio.sleep(interval_s)
    finally:
        await pool.close()
