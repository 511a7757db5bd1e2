"""Kafka topic admin: the purchases topic exists with the configured partition count."""

from __future__ import annotations

import contextlib
import logging

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


async def end_offsets(bootstrap: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """Each partition's end offset (lag = end - the offset stored in its lease)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=ADMIN_TIMEOUT_MS
    )
    try:
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    except (TimeoutError, KafkaError, OSError) as exc:
        raise UnavailableError(f"kafka unavailable: {exc!r}") from exc
    finally:
        with contextlib.suppress(KafkaError):
            await consumer.stop()


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
