"""`flashsale status`: one screen an operator reads during a sale."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from infra.embedded.proc import pid_alive
from infra.stackfile import StackFile
from services.errors import UnavailableError
from services.resources import open_core
from services.settings import Settings
from services.store.items import list_items
from services.store.leases import list_leases
from services.topics import end_offsets

THROUGHPUT_WINDOW_S = 10


def settings_for(stack: StackFile) -> Settings:
    return Settings.from_env(
        database_url=stack.database_url,
        redis_url=stack.redis_url,
        redis_cluster=stack.redis_cluster,
        kafka_bootstrap=stack.kafka_bootstrap,
        admin_token=stack.admin_token,
        secret=stack.secret,
    )


async def show(stack: StackFile, console: Console) -> None:
    settings = settings_for(stack)
    async with open_core(settings) as core:
        items = await list_items(core.pool)
        leases = await list_leases(core.pool, settings.topic)
        recent = await core.pool.fetchval(
            "SELECT count(*) FROM purchases WHERE applied_at > now() - make_interval(secs => $1)",
            THROUGHPUT_WINDOW_S,
        )
    try:
        ends = await end_offsets(
            settings.kafka_bootstrap, settings.topic, [lease.partition for lease in leases]
        )
    except UnavailableError:
        ends = {}
    console.print(f"gateway {stack.gateway_url}")
    table = Table("item", "stock", "sold", "remaining", "per user", title="items")
    for item in items:
        table.add_row(
            item.item_id,
            str(item.stock),
            str(item.sold),
            str(item.remaining),
            str(item.per_user_limit),
        )
    console.print(table)
    parts = Table(
        "partition",
        "owner",
        "epoch",
        "next offset",
        "end offset",
        "lag",
        "log gen",
        title="partitions",
    )
    for lease in leases:
        end = ends.get(lease.partition)
        lag = "?" if end is None else str(max(end - lease.next_offset, 0))
        parts.add_row(
            str(lease.partition),
            lease.owner or "-",
            str(lease.epoch),
            str(lease.next_offset),
            "?" if end is None else str(end),
            lag,
            str(lease.log_generation),
        )
    console.print(parts)
    procs = Table("consumer", "pid", "alive", title="consumers")
    for name, pid in zip(stack.consumer_names, stack.pids.consumers, strict=False):
        procs.add_row(name, str(pid), "yes" if pid_alive(pid) else "no")
    console.print(procs)
    console.print(
        f"throughput: {recent / THROUGHPUT_WINDOW_S:.1f} purchases/s applied "
        f"(last {THROUGHPUT_WINDOW_S}s)"
    )
