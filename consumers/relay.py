"""The outbox relay: publishes purchase events to the events topic, in outbox order.

It runs inside each consumer process, for the partitions whose lease the process
holds (the outbox rows carry the partition of the change): one relay per
partition at a time, so the events of an item (one item, one partition) go out
in the order they were written. A round sends the oldest unpublished events,
waits for the broker's acknowledgements, then marks what was acknowledged.
A crash between the two sends those events again on the next round, by
whoever holds the lease then: at least once, duplicates keep their `event_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from services.errors import UnavailableError
from services.failpoints import failpoint
from services.producer import started_producer
from services.resources import CoreResources
from services.settings import Settings
from services.store.outbox import (
    OutboxEvent,
    mark_published,
    prune_published,
    published_marks,
    unpublished_events,
)

log = logging.getLogger(__name__)

RELAY_BATCH = 500
# How often a relay deletes the published events past their retention, and how
# many at most per partition each time (the outbox grows by a sale's events).
PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 20_000
# How often an idle relay looks for new events: the delay an event may wait.
RELAY_IDLE_S = 0.2
SEND_TIMEOUT_S = 10.0
LINGER_MS = 5


class EventRelay:
    def __init__(
        self,
        settings: Settings,
        core: CoreResources,
        producer: AIOKafkaProducer,
        owned: Callable[[], dict[int, int]],
    ) -> None:
        self.settings = settings
        self.core = core
        self.producer = producer
        # partition -> epoch of the leases this process holds right now.
        self.owned = owned
        self.published = 0
        # The producers' partitioner, over the sorted partitions: one item, one partition.
        self._partitioner = DefaultPartitioner()
        self._prune_at = 0.0

    async def run_once(self) -> int:
        """One round; the number of events acknowledged and marked."""
        events = await unpublished_events(
            self.core.pool, self.settings.topic, dict(self.owned()), RELAY_BATCH
        )
        if not events:
            return 0
        acked, failure = await self._send(events)
        failpoint(self.settings.failpoint, "relay.after_publish")
        marks = published_marks(events, set(acked))
        await mark_published(self.core.pool, self.settings.topic, marks)
        self.published += len(acked)
        if failure is not None:
            raise UnavailableError(f"publishing events failed: {failure!r}") from failure
        return len(acked)

    async def prune_if_due(self) -> int:
        """Delete the owned partitions' published events past the retention, at
        most once every PRUNE_EVERY_S; the number deleted."""
        now = time.monotonic()
        if now < self._prune_at:
            return 0
        self._prune_at = now + PRUNE_EVERY_S
        deleted = await prune_published(
            self.core.pool,
            self.settings.topic,
            sorted(self.owned()),
            self.settings.outbox_retention_s,
            PRUNE_BATCH,
        )
        if deleted:
            log.info("outbox: deleted %d published events past their retention", deleted)
        return deleted

    async def _send(self, events: list[OutboxEvent]) -> tuple[list[int], BaseException | None]:
        """Send a round; the seqs the broker acknowledged, and a failure if any.

        An item's events all go to one partition of the events topic (keyed by
        item id). Each partition's events go in batches, each sent only once the
        one before it was acknowledged: a batch is appended whole or not at all,
        so no event is ever delivered after an earlier one of its item failed,
        and a resend repeats events in their order.
        """
        topic = self.settings.events_topic
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                partitions = sorted(await self.producer.partitions_for(topic))
        except (KafkaError, OSError, TimeoutError) as exc:
            return [], exc
        by_partition: dict[int, list[OutboxEvent]] = {}
        for event in events:
            partition = self._partitioner(event.item_id.encode(), partitions, partitions)
            by_partition.setdefault(partition, []).append(event)
        chains = await asyncio.gather(
            *(self._send_chain(topic, p, chain) for p, chain in by_partition.items())
        )
        acked = sorted(seq for seqs, _ in chains for seq in seqs)
        failure = next((failed for _, failed in chains if failed is not None), None)
        return acked, failure

    async def _send_chain(
        self, topic: str, partition: int, events: list[OutboxEvent]
    ) -> tuple[list[int], BaseException | None]:
        acked: list[int] = []
        pending = events
        while pending:
            batch = self.producer.create_batch()
            taken = 0
            for event in pending:
                key, value = event.item_id.encode(), event.encode()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    break  # full: the rest go in the next batch
                taken += 1
            batch.close()
            if taken == 0:
                return acked, UnavailableError(f"event {pending[0].event_id} fits no batch")
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    delivery = await self.producer.send_batch(batch, topic, partition=partition)
                    await delivery
            except (KafkaError, OSError, TimeoutError) as exc:
                return acked, exc
            acked.extend(event.seq for event in pending[:taken])
            pending = pending[taken:]
        return acked, None


@contextlib.asynccontextmanager
async def open_event_producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    client_id = f"flashsale-relay-{settings.consumer_name or 'consumer'}"
    timeout_ms = int(SEND_TIMEOUT_S * 1000) // 2
    async with started_producer(settings, LINGER_MS, timeout_ms, client_id) as producer:
        yield producer
