"""What a chaos run writes down when accepted purchases stay pending.

A purchase that never becomes final is a liveness failure whose cause sits in
the consumers: which partitions hold the stuck purchases, who owns them, how far
their stored offsets trail the broker's log. Written to a file beside the
history so a stall found by a long run can be explained after the stack is gone.
Its SQL is its own, like the checker's: it must not trust the code it reports on.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import asyncpg
from aiokafka.partitioner import murmur2

from loadtests.chaos.history import PURCHASE, History
from services.errors import UnavailableError
from services.topics import end_offsets

LEASES_SQL = """
SELECT kafka_partition, epoch, owner, next_offset, log_generation,
       extract(epoch FROM now() - updated_at)::float8 AS idle_s
FROM partition_leases WHERE topic = $1 ORDER BY kafka_partition
"""


def partition_of(item_id: str, partitions: int) -> int:
    """Kafka's default partitioner for a keyed message (what the gateway's producer uses)."""
    return int((murmur2(item_id.encode()) & 0x7FFFFFFF) % partitions)


def stuck_by_partition(history: History, missing: set[str], partitions: int) -> Counter[int]:
    items = {
        op.purchase_id: op.item
        for op in history.ops
        if op.kind == PURCHASE and op.purchase_id in missing and op.item
    }
    return Counter(partition_of(item, partitions) for item in items.values() if item)


async def write_stall_report(
    path: Path,
    history: History,
    missing: set[str],
    *,
    database_url: str,
    bootstrap: str,
    topic: str,
    partitions: int,
) -> None:
    stuck = stuck_by_partition(history, missing, partitions)
    lines = [f"{time.strftime('%H:%M:%S')} {len(missing)} accepted purchases not final"]
    lines.append("stuck per partition: " + ", ".join(f"p{p}={n}" for p, n in sorted(stuck.items())))
    try:
        ends = await end_offsets(bootstrap, topic, list(range(partitions)))
    except UnavailableError as exc:
        ends = {}
        lines.append(f"broker end offsets: unavailable ({exc})")
    try:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(LEASES_SQL, topic)
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError) as exc:
        rows = []
        lines.append(f"leases: unreadable ({exc!r})")
    for row in rows:
        partition = row["kafka_partition"]
        lines.append(
            f"p{partition}: owner={row['owner']} epoch={row['epoch']}"
            f" next_offset={row['next_offset']} end={ends.get(partition, '?')}"
            f" generation={row['log_generation']} idle={row['idle_s']:.1f}s"
            f" stuck={stuck.get(partition, 0)}"
        )
    lines.append("some stuck ids: " + " ".join(sorted(missing)[:10]))
    with path.open("a", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n\n")
