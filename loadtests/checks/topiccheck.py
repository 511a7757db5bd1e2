"""After a run: every event the outbox marks published is on the events topic, in
outbox order per item (design.md, "The sale's lifecycle").

It reads the topic with a bare consumer (no group, nothing committed) and the
outbox with the checker's own SQL (invariants.sql), not through the relay it checks.
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from loadtests.checks.lifecycle import POLL_S, QUERIES, SHOWN
from loadtests.sale.target import EventsAccess


class TopicReadError(Exception):
    """The events topic could not be read to its end."""


async def read_topic(
    access: EventsAccess, item_ids: list[str], timeout_s: float
) -> dict[str, list[str]]:
    """The event ids of these items, per item in topic order (a resend shows twice),
    of everything on the topic when called: read from the start up to the end
    offsets taken first, without a consumer group (nothing committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=access.bootstrap, group_id=None, enable_auto_commit=False
    )
    found: dict[str, list[str]] = {item_id: [] for item_id in item_ids}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        await consumer.start()
        await consumer.topics()  # the metadata that names the topic's partitions
        partitions = consumer.partitions_for_topic(access.topic) or set()
        tps = [TopicPartition(access.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = [tp for tp in tps if ends[tp] > 0]
        while pending:
            if loop.time() >= deadline:
                raise TopicReadError(f"{access.topic} not read to its end in {timeout_s:.0f} s")
            batches = await consumer.getmany(*pending, timeout_ms=int(POLL_S * 2000))
            for records in batches.values():
                for record in records:
                    event = json.loads(record.value) if record.value is not None else {}
                    item_id = event.get("item_id")
                    if item_id in found:
                        found[item_id].append(str(event.get("event_id")))
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
    except (KafkaError, OSError) as exc:
        raise TopicReadError(f"reading {access.topic}: {exc!r}") from exc
    finally:
        await consumer.stop()
    return found


async def check_topic(
    conn: asyncpg.Connection,
    access: EventsAccess,
    item_ids: list[str],
    violations: list[str],
    read_timeout_s: float,
) -> None:
    """Every event the outbox marks published is on the topic, and each item's
    events came in outbox order (a resend after a crash may repeat some: the
    first copy of each counts)."""
    rows = await conn.fetch(QUERIES["published_events"], item_ids)
    outbox: dict[str, list[str]] = {item_id: [] for item_id in item_ids}
    for row in rows:
        outbox[row["item_id"]].append(row["event_id"])
    try:
        topic = await read_topic(access, item_ids, read_timeout_s)
    except TopicReadError as exc:
        violations.append(f"EVENTS: could not read the events topic: {exc}")
        return
    seen = {item_id: set(ids) for item_id, ids in topic.items()}
    missing = [e for item_id, ids in outbox.items() for e in ids if e not in seen[item_id]]
    if missing:
        violations.append(
            f"EVENTS: {len(missing)} events marked published are not on {access.topic}"
            f" (e.g. {missing[:SHOWN]})"
        )
    disordered = []
    for item_id, ids in outbox.items():
        wanted = set(ids)
        firsts = [e for e in dict.fromkeys(topic[item_id]) if e in wanted]
        if wanted <= seen[item_id] and firsts != ids:
            disordered.append(item_id)
    if disordered:
        violations.append(
            f"EVENTS: {len(disordered)} items' events reached {access.topic} out of outbox"
            f" order (e.g. {disordered[:SHOWN]})"
        )
