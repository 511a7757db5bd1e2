"""Kafka topic admin: the purchases topic exists with the configured partition count."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from services.errors import UnavailableError

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_MS = 10_000


async def ensure_topic(bootstrap: str, topic: str, partitions: int) -> bool:
    """Create the topic when missing; True when it was created now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ADMIN_TIMEOUT_MS)
    try:
        await admin.start()
        existing = await admin.list_topics()
        if topic in existing:
            return False
        try:
            await admin.create_topics(
                [NewTopic(name=topic, num_partitions=partitions, replication_factor=1)]
            )
        except TopicAlreadyExistsError:
            return False
        log.info("created topic %s with %d partitions", topic, partitions)
        return True
    except (TimeoutError, KafkaError, OSError) as exc:
        raise UnavailableError(f"kafka unavailable at {bootstrap}: {exc!r}") from exc
    finally:
        await admin.close()


class EndOffsets:
    """A long-lived Kafka client that answers partitions' end offsets (lag = end -
    the offset stored in the lease). A process that asks often keeps one: a
    client per question is a broker connection per question."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer

    async def of(self, topic: str, partitions: list[int]) -> dict[int, int]:
        tps = [TopicPartition(topic, p) for p in partitions]
        try:
            ends = await self._consumer.end_offsets(tps)
        except (TimeoutError, KafkaError, OSError) as exc:
            raise UnavailableError(f"kafka unavailable: {exc!r}") from exc
        return {tp.partition: offset for tp, offset in ends.items()}


@contextlib.asynccontextmanager
async def open_end_offsets(bootstrap: str) -> AsyncIterator[EndOffsets]:
    """Started here, stopped at the block's end; UnavailableError if it cannot start."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=ADMIN_TIMEOUT_MS
    )
    try:
        try:
            await consumer.start()
        except (TimeoutError, KafkaError, OSError) as exc:
            raise UnavailableError(f"kafka unavailable at {bootstrap}: {exc!r}") from exc
        yield EndOffsets(consumer)
    finally:
        with contextlib.suppress(KafkaError):
            await consumer.stop()


async def end_offsets(bootstrap: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """Each partition's end offset, asked once (the CLI; a gateway keeps an EndOffsets)."""
    async with open_end_offsets(bootstrap) as reader:
        return await reader.of(topic, partitions)


async def partition_count(bootstrap: str, topic: str) -> int | None:
    """How many partitions the broker has for `topic` now; None when it has no such topic.

    A broker that lost its log re-creates the topic, maybe with fewer partitions
    than the settings say."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=ADMIN_TIMEOUT_MS
    )
    try:
        await consumer.start()
        # All topics' metadata: asking for one topic by name makes the embedded
        # broker create it when missing.
        cluster = await consumer._client.fetch_all_metadata()
        found = cluster.partitions_for_topic(topic)
        return None if not found else len(found)
    except (TimeoutError, KafkaError, OSError) as exc:
        raise UnavailableError(f"kafka unavailable: {exc!r}") from exc
    finally:
        with contextlib.suppress(KafkaError):
            await consumer.stop()
