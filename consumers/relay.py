"""The outbox relay: publishes purchase events to the events topic, in outbox order.

It runs inside each consumer process, for the partitions whose lease the process
holds (the outbox rows carry the partition of the change): one relay per
partition at a time, so the events of an item (one item, one partition) go out
in the order they were written. A round sends the oldest unpublished events,
waits for the broker's acknowledgements, then marks the acknowledged prefix.
A crash between the two sends that prefix again on the next round, by whoever
holds the lease then: at least once, duplicates keep their `event_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.errors import UnavailableError
from services.failpoints import failpoint
from services.resources import CoreResources
from services.settings import Settings
from services.store.outbox import OutboxEvent, mark_published, unpublished_events

log = logging.getLogger(__name__)

RELAY_BATCH = 500
# How often an idle relay looks for new events: the delay an event may wait.
RELAY_IDLE_S = 0.2
SEND_TIMEOUT_S = 10.0
LINGER_MS = 5
# As for the purchases producer: a restarted embedded broker may recreate topics.
METADATA_MAX_AGE_MS = 5_000


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

    async def run_once(self) -> int:
        """One round; the number of events acknowledged and marked."""
        events = await unpublished_events(
            self.core.pool, self.settings.topic, dict(self.owned()), RELAY_BATCH
        )
        if not events:
            return 0
        acked, failure = await self._send(events)
        failpoint(self.settings.failpoint, "relay.after_publish")
        await mark_published(self.core.pool, acked)
        self.published += len(acked)
        if failure is not None:
            raise UnavailableError(f"publishing events failed: {failure!r}") from failure
        return len(acked)

    async def _send(self, events: list[OutboxEvent]) -> tuple[list[int], BaseException | None]:
        """Send all, wait for all; the acknowledged prefix (in outbox order) and the
        first failure. Only the prefix is marked: what follows a failure is sent
        again after it, so a reader that drops duplicates sees each item's events
        in order."""
        topic = self.settings.events_topic
        deliveries: list[asyncio.Future[object]] = []
        failure: BaseException | None = None
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                for event in events:
                    deliveries.append(
                        await self.producer.send(topic, event.encode(), key=event.item_id.encode())
                    )
        except (KafkaError, OSError, TimeoutError) as exc:
            failure = exc
        results: list[object] = []
        if deliveries:
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    results = await asyncio.gather(*deliveries, return_exceptions=True)
            except TimeoutError as exc:
                failure = failure or exc
        acked: list[int] = []
        for event, result in zip(events, results, strict=False):
            if isinstance(result, BaseException):
                failure = failure or result
                break
            acked.append(event.seq)
        return acked, failure


@contextlib.asynccontextmanager
async def open_event_producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        # The broker refuses InitProducerId; readers deduplicate on event_id.
        enable_idempotence=False,
        linger_ms=LINGER_MS,
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        request_timeout_ms=int(SEND_TIMEOUT_S * 1000) // 2,
        client_id=f"flashsale-relay-{settings.consumer_name or 'consumer'}",
    )
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        await producer.stop()
        raise UnavailableError(f"kafka unavailable at {settings.kafka_bootstrap}: {exc!r}") from exc
    try:
        yield producer
    finally:
        await producer.stop()
