"""The purchase producer: keyed by item id, acks=all, many sends in flight at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from services.errors import ProduceUncertainError, UnavailableError
from services.schema import PurchaseMessage
from services.settings import Settings
from services.tracing import NO_TRACING, Tracing

PRODUCE_TIMEOUT_S = 5.0
LINGER_MS = 2
# A broker that lost its topics (the embedded one on restart) may recreate the
# topic with fewer partitions and still acknowledge sends to the old ones, whose
# records nobody can read: stale metadata must not outlive that for long.
METADATA_MAX_AGE_MS = 5_000
# Keys whose partition index a producer remembers (item ids on sale: few).
PARTITIONS_REMEMBERED = 10_000


class RememberingPartitioner:
    """aiokafka's DefaultPartitioner (Kafka's murmur2 of the key), remembered per
    key and partition count: its murmur2 is pure Python, about 4 us a message, and
    a sale sends thousands of messages with the same key (the item id)."""

    def __init__(self) -> None:
        self._index: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        count = len(all_partitions)
        index = self._index.get((key, count))
        if index is None:
            if len(self._index) >= PARTITIONS_REMEMBERED:
                self._index.clear()
            index = self._index[(key, count)] = (murmur2(key) & 0x7FFFFFFF) % count
        return all_partitions[index]


class PurchaseProducer:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        tracing: Tracing = NO_TRACING,
        default_partitions: int = 1,
    ) -> None:
        self._producer = producer
        self.topic = topic
        self.tracing = tracing
        self.default_partitions = default_partitions
        # The same function as the producer's partitioner (a pure function of the
        # key and the partition count): it names where a record went.
        self._partitioner = RememberingPartitioner()

    async def publish(self, message: PurchaseMessage) -> tuple[int, int]:
        """Send and wait for the broker's ack: (partition, offset). UnavailableError on failure.

        Each caller awaits its own delivery, so thousands of requests share one
        pipelined producer instead of queueing behind one `send_and_wait`.
        """
        if self.tracing.enabled:
            return await self._traced_publish(message)
        return await self._publish(message, None)

    async def _traced_publish(self, message: PurchaseMessage) -> tuple[int, int]:
        """A producer span; its context travels in the record's headers."""
        from opentelemetry.trace import SpanKind  # noqa: PLC0415

        assert self.tracing.tracer is not None
        attributes = {
            "messaging.system": "kafka",
            "messaging.destination.name": self.topic,
            "messaging.operation.type": "send",
            "flashsale.purchase_id": message.purchase_id,
            "flashsale.item_id": message.item_id,
        }
        with self.tracing.tracer.start_as_current_span(
            f"{self.topic} publish", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            partition, offset = await self._publish(message, self.tracing.headers())
            span.set_attribute("messaging.destination.partition.id", str(partition))
            span.set_attribute("messaging.kafka.offset", offset)
            return partition, offset

    async def _publish(
        self, message: PurchaseMessage, headers: list[tuple[str, bytes]] | None
    ) -> tuple[int, int]:
        """Two steps, each failing differently. aiokafka's send() waits for metadata
        and room in a batch, then appends the record and returns its delivery future
        with no await in between: when send() raises or is cancelled, the record never
        entered a batch (a certain failure, UnavailableError). Once it returned, the
        sender delivers the batch whatever happens to our wait (cancelling the future
        does not stop it), so a timeout or an error from then on is uncertain: the
        broker may have appended it (ProduceUncertainError)."""
        deadline = asyncio.get_running_loop().time() + PRODUCE_TIMEOUT_S
        key = message.item_id.encode()
        try:
            async with asyncio.timeout_at(deadline):
                delivery = await self._producer.send(
                    self.topic, message.encode(), key=key, headers=headers
                )
        except (KafkaError, OSError, TimeoutError) as exc:
            raise UnavailableError(f"kafka produce failed before sending: {exc!r}") from exc
        try:
            async with asyncio.timeout_at(deadline):
                metadata = await delivery
        except (KafkaError, OSError, TimeoutError) as exc:
            partition = self.partition_for(key)
            raise ProduceUncertainError(
                f"kafka produce to partition {partition} failed after sending: {exc!r}", partition
            ) from exc
        return metadata.partition, metadata.offset

    async def partitions(self) -> frozenset[int]:
        """The topic's partitions, as this producer sends to them."""
        try:
            async with asyncio.timeout(PRODUCE_TIMEOUT_S):
                found = await self._producer.partitions_for(self.topic)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise UnavailableError(f"kafka metadata of {self.topic}: {exc!r}") from exc
        return frozenset(found)

    async def publish_to(self, message: PurchaseMessage, partition: int) -> int:
        """Send to one named partition (a fence goes to every one) and wait for the
        ack: the offset. UnavailableError on failure."""
        try:
            async with asyncio.timeout(PRODUCE_TIMEOUT_S):
                delivery = await self._producer.send(
                    self.topic, message.encode(), partition=partition
                )
                metadata = await delivery
        except (KafkaError, OSError, TimeoutError) as exc:
            raise UnavailableError(f"kafka produce failed: {exc!r}") from exc
        return int(metadata.offset)

    def partition_for(self, key: bytes) -> int:
        """The partition a record with this key goes to, from the producer's metadata
        as aiokafka's send() reads it (the partition count of the settings when the
        producer has none yet)."""
        cluster = self._producer.client.cluster
        known = cluster.partitions_for_topic(self.topic)
        partitions = list(known) if known else list(range(self.default_partitions))
        available = list(cluster.available_partitions_for_topic(self.topic) or partitions)
        return self._partitioner(key, partitions, available)

    async def broker_answers(self) -> None:
        """Ask the broker for fresh metadata (readiness): cached metadata would answer
        for a broker that is gone. Naming no topic also creates none."""
        try:
            await self._producer.client.fetch_all_metadata()
        except (KafkaError, OSError) as exc:
            raise UnavailableError(f"kafka metadata: {exc!r}") from exc


@contextlib.asynccontextmanager
async def started_producer(
    settings: Settings, linger_ms: int, request_timeout_ms: int, client_id: str
) -> AsyncIterator[AIOKafkaProducer]:
    """A started Kafka producer, stopped at the block's end; UnavailableError if it cannot start."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        # The broker refuses InitProducerId; every reader removes duplicates
        # (Postgres on the idempotency key, event readers on event_id).
        enable_idempotence=False,
        linger_ms=linger_ms,
        partitioner=RememberingPartitioner(),
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        request_timeout_ms=request_timeout_ms,
        client_id=client_id,
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


@contextlib.asynccontextmanager
async def open_producer(
    settings: Settings, tracing: Tracing = NO_TRACING
) -> AsyncIterator[PurchaseProducer]:
    client_id = f"flashsale-{settings.consumer_name or 'gateway'}"
    timeout_ms = int(PRODUCE_TIMEOUT_S * 1000)
    async with started_producer(settings, LINGER_MS, timeout_ms, client_id) as producer:
        yield PurchaseProducer(producer, settings.topic, tracing, settings.partitions)
