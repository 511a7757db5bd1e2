"""The purchase producer: keyed by item id, acks=all, many sends in flight at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.errors import UnavailableError
from services.schema import PurchaseMessage
from services.settings import Settings

PRODUCE_TIMEOUT_S = 5.0
LINGER_MS = 2
# A broker that lost its topics (the embedded one on restart) may recreate the
# topic with fewer partitions and still acknowledge sends to the old ones, whose
# records nobody can read: stale metadata must not outlive that for long.
METADATA_MAX_AGE_MS = 5_000


class PurchaseProducer:
    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def publish(self, message: PurchaseMessage) -> tuple[int, int]:
        """Send and wait for the broker's ack: (partition, offset). UnavailableError on failure.

        Each caller awaits its own delivery, so thousands of requests share one
        pipelined producer instead of queueing behind one `send_and_wait`.
        """
        try:
            async with asyncio.timeout(PRODUCE_TIMEOUT_S):
                delivery = await self._producer.send(
                    self.topic, message.encode(), key=message.item_id.encode()
                )
                metadata = await delivery
        except (KafkaError, OSError, TimeoutError) as exc:
            raise UnavailableError(f"kafka produce failed: {exc!r}") from exc
        return metadata.partition, metadata.offset

    async def broker_answers(self) -> None:
        """Ask the broker for fresh metadata (readiness): cached metadata would answer
        for a broker that is gone. Naming no topic also creates none."""
        try:
            await self._producer.client.fetch_all_metadata()
        except (KafkaError, OSError) as exc:
            raise UnavailableError(f"kafka metadata: {exc!r}") from exc


@contextlib.asynccontextmanager
async def open_producer(settings: Settings) -> AsyncIterator[PurchaseProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        # The broker refuses InitProducerId; Postgres removes duplicates anyway.
        enable_idempotence=False,
        linger_ms=LINGER_MS,
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        request_timeout_ms=int(PRODUCE_TIMEOUT_S * 1000),
        client_id=f"flashsale-{settings.consumer_name or 'gateway'}",
    )
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        await producer.stop()
        raise UnavailableError(f"kafka unavailable at {settings.kafka_bootstrap}: {exc!r}") from exc
    try:
        yield PurchaseProducer(producer, settings.topic)
    finally:
        await producer.stop()
