"""The sale's lifecycle after a run: holds settled, returned units back in the filter,
and an event for every status change (design.md, "The sale's lifecycle").

Like `loadtests.invariants`, it reads Postgres with its own SQL (the check must
not share a bug with the code it checks), and Redis by the filter's key names.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.schema import MessageError, PurchaseMessage
from services.stockfilter.client import RedisClient, close_redis, open_redis
from services.stockfilter.keys import reservations_key, stock_key

POLL_S = 0.25
# Statuses whose units are counted in items.sold.
HELD = ("confirmed", "paid")
# Statuses reached from confirmed: each has two events, confirmed and itself.
MOVED_ON = ("cancelled", "paid", "expired")
SHOWN = 3


@dataclass(frozen=True, slots=True)
class FilterAccess:
    """Where the stock filter lives, to read it after a run."""

    redis_url: str
    redis_cluster: bool
    shards: int


@dataclass(frozen=True, slots=True)
class EventsAccess:
    """Where the relay publishes events, to read them back after a run."""

    bootstrap: str
    topic: str


@dataclass(frozen=True, slots=True)
class FilterReading:
    item_id: str
    # Units in the shards that exist; None: some shard is missing.
    filter_units: int | None
    # Units in reservation records of purchases not (yet) counted in sold.
    in_flight: int
    remaining: int  # stock - sold, by Postgres

    @property
    def drift(self) -> int:
        """Units the filter holds beyond what Postgres says is left (negative: lacks)."""
        return (self.filter_units or 0) + self.in_flight - self.remaining

    @property
    def agrees(self) -> bool:
        return self.filter_units is not None and self.drift == 0


async def _poll(check: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if await check():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(POLL_S)


async def wait_for_holds(conn: asyncpg.Connection, item_ids: list[str], timeout_s: float) -> int:
    """Wait until no hold of these items is still confirmed (each paid or expired
    by its partition's owner); how many still are when the time is up."""
    left = 0

    async def settled() -> bool:
        nonlocal left
        left = int(
            await conn.fetchval(
                "SELECT count(*) FROM purchases WHERE item_id = ANY($1::text[])"
                " AND status = 'confirmed' AND pay_by IS NOT NULL",
                item_ids,
            )
        )
        return left == 0

    await _poll(settled, timeout_s)
    return left


async def check_events(
    conn: asyncpg.Connection, item_ids: list[str], violations: list[str], publish_wait_s: float
) -> None:
    """Every status a purchase reached has its event `<purchase_id>:<status>` in the
    outbox (confirmed, then the status it moved on to), none other, in order, and
    every event was published (marked once the broker acknowledged it)."""
    missing = await conn.fetch(
        "WITH expected AS ("
        "  SELECT purchase_id || ':' || status AS event_id FROM purchases"
        "  WHERE item_id = ANY($1::text[])"
        "  UNION ALL"
        "  SELECT purchase_id || ':confirmed' FROM purchases"
        "  WHERE item_id = ANY($1::text[]) AND status = ANY($2::text[])"
        ") SELECT x.event_id FROM expected x"
        " LEFT JOIN purchase_events e ON e.event_id = x.event_id WHERE e.seq IS NULL",
        item_ids,
        list(MOVED_ON),
    )
    if missing:
        shown = [row["event_id"] for row in missing[:SHOWN]]
        violations.append(f"EVENTS: {len(missing)} status changes have no event (e.g. {shown})")
    stray = await conn.fetch(
        "SELECT e.event_id, p.status FROM purchase_events e"
        " LEFT JOIN purchases p ON p.purchase_id = e.purchase_id"
        " WHERE e.item_id = ANY($1::text[]) AND (p.purchase_id IS NULL OR NOT ("
        "   e.status = p.status OR (e.status = 'confirmed' AND p.status = ANY($2::text[]))))",
        item_ids,
        list(MOVED_ON),
    )
    if stray:
        shown = [f"{row['event_id']} (now {row['status']})" for row in stray[:SHOWN]]
        violations.append(
            f"EVENTS: {len(stray)} events name a status their purchase does not have:"
            f" a status moved back or twice (e.g. {shown})"
        )
    disordered = await conn.fetchval(
        "SELECT count(*) FROM purchase_events c JOIN purchase_events m"
        " ON m.purchase_id = c.purchase_id AND m.status <> 'confirmed'"
        " WHERE c.item_id = ANY($1::text[]) AND c.status = 'confirmed' AND m.seq < c.seq",
        item_ids,
    )
    if disordered:
        violations.append(f"EVENTS: {disordered} purchases have an event before their confirmed")
    doubled = await conn.fetchval(
        "SELECT count(*) FROM (SELECT event_id FROM purchase_events"
        " WHERE item_id = ANY($1::text[]) GROUP BY event_id HAVING count(*) > 1) AS d",
        item_ids,
    )
    if doubled:
        violations.append(f"EVENTS: {doubled} status changes were written to the outbox twice")
    unpublished = 0

    async def published() -> bool:
        nonlocal unpublished
        unpublished = int(
            await conn.fetchval(
                "SELECT count(*) FROM purchase_events e JOIN partition_leases l"
                " ON l.topic = e.topic AND l.kafka_partition = e.kafka_partition"
                " WHERE e.item_id = ANY($1::text[]) AND e.seq > l.events_published_seq",
                item_ids,
            )
        )
        return unpublished == 0

    if not await _poll(published, publish_wait_s):
        violations.append(
            f"EVENTS: {unpublished} events still unpublished after {publish_wait_s:.0f} s"
        )


async def read_filter(
    redis: RedisClient, conn: asyncpg.Connection, item_id: str, shards: int
) -> FilterReading:
    """Redis first, Postgres second: a record settled in between is still counted
    as in flight, and its purchase's units are then also in sold or back."""
    units: list[int | None] = []
    records: list[PurchaseMessage] = []
    for shard in range(shards):
        raw = await redis.get(stock_key(item_id, shard))
        units.append(None if raw is None else int(raw))
        for value in (await redis.hgetall(reservations_key(item_id, shard))).values():
            try:
                raw_record = value.encode() if isinstance(value, str) else value
                records.append(PurchaseMessage.decode(raw_record))
            except MessageError:
                continue  # the reconciler logs and drops these; they hold no units we can name
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        item = await conn.fetchrow("SELECT stock, sold FROM items WHERE item_id = $1", item_id)
        rows = await conn.fetch(
            "SELECT purchase_id, status FROM purchases WHERE purchase_id = ANY($1::text[])",
            [m.purchase_id for m in records],
        )
    statuses = {row["purchase_id"]: row["status"] for row in rows}
    in_flight = sum(m.quantity for m in records if statuses.get(m.purchase_id) not in HELD)
    present = [max(u, 0) for u in units if u is not None]
    return FilterReading(
        item_id,
        None if len(present) < len(units) else sum(present),
        in_flight,
        0 if item is None else item["stock"] - item["sold"],
    )


async def check_filter(
    conn: asyncpg.Connection,
    access: FilterAccess,
    item_ids: list[str],
    violations: list[str],
    settle_wait_s: float,
) -> list[FilterReading]:
    """Every unit a cancel or an expiry returned was sold again or is back in the
    filter: filter units + units in flight == stock - sold, once the consumers
    settled their last batch (waited for at most `settle_wait_s`)."""
    redis = open_redis(access.redis_url, access.redis_cluster)
    readings: list[FilterReading] = []
    try:
        for item_id in item_ids:
            reading = await read_filter(redis, conn, item_id, access.shards)

            async def agrees(item_id: str = item_id) -> bool:
                nonlocal reading
                reading = await read_filter(redis, conn, item_id, access.shards)
                return reading.agrees

            await _poll(agrees, settle_wait_s)
            readings.append(reading)
            if reading.filter_units is None:
                violations.append(f"FILTER: {item_id}: a stock filter shard is missing in Redis")
            elif reading.drift > 0:
                violations.append(
                    f"FILTER: {item_id}: filter {reading.filter_units} + in flight"
                    f" {reading.in_flight} > stock - sold {reading.remaining}:"
                    f" {reading.drift} units went back on sale twice"
                )
            elif reading.drift < 0:
                violations.append(
                    f"FILTER: {item_id}: filter {reading.filter_units} + in flight"
                    f" {reading.in_flight} < stock - sold {reading.remaining}:"
                    f" {-reading.drift} returned units neither sold again nor back on sale"
                )
    finally:
        await close_redis(redis)
    return readings


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
    rows = await conn.fetch(
        "SELECT e.item_id, e.event_id FROM purchase_events e JOIN partition_leases l"
        " ON l.topic = e.topic AND l.kafka_partition = e.kafka_partition"
        " WHERE e.item_id = ANY($1::text[]) AND e.seq <= l.events_published_seq"
        " ORDER BY e.seq",
        item_ids,
    )
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
