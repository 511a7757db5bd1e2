"""Concurrent purchases produced in batches: each request learns its own offset,
the record there is its message, and keys land where aiokafka's `send` puts them."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.producer import open_producer
from services.resources import CoreResources
from services.schema import PurchaseMessage
from services.settings import Settings
from tests.conftest import fresh_id

MESSAGES = 600  # several batches of one partition, and several partitions
ITEMS = 7


def _message(item_id: str, n: int) -> PurchaseMessage:
    return PurchaseMessage(
        f"p-{fresh_id()}", f"u-{n}", f"k-{n}", item_id, 1, 0, int(time.time() * 1000)
    )


async def _records(
    settings: Settings, wanted: dict[TopicPartition, list[int]]
) -> dict[tuple[int, int], bytes]:
    """Every record at the wanted offsets, read back from the broker."""
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await reader.start()
    found: dict[tuple[int, int], bytes] = {}
    needed = {(tp.partition, offset) for tp, offsets in wanted.items() for offset in offsets}
    try:
        reader.assign(list(wanted))
        for tp, offsets in wanted.items():
            reader.seek(tp, min(offsets))
        async with asyncio.timeout(60):
            while not needed <= found.keys():
                batches = await reader.getmany(timeout_ms=200)
                for tp, records in batches.items():
                    for record in records:
                        assert record.value is not None
                        found[(tp.partition, record.offset)] = record.value
    finally:
        await reader.stop()
    return found


@pytest.mark.timeout(120)
async def test_concurrent_publishes_each_get_their_own_record(
    settings: Settings, core: CoreResources
) -> None:
    items = [fresh_id("batch") for _ in range(ITEMS)]
    messages = [_message(items[n % ITEMS], n) for n in range(MESSAGES)]
    async with open_producer(settings) as producer:
        assert producer.batcher is not None
        # The first send waits for the topic's metadata; from then on, batches.
        await producer.publish(_message(items[0], -1))
        assert producer.batcher.partition_of(items[0].encode()) is not None
        acked = await asyncio.gather(*(producer.publish(m) for m in messages))
        # The same partition aiokafka's own send gives each key.
        for item_id in items:
            own = await producer._producer.send_and_wait(
                settings.topic, b"{}", key=item_id.encode()
            )
            where = {p for (p, _), m in zip(acked, messages, strict=True) if m.item_id == item_id}
            assert where == {own.partition}, item_id
    assert len(set(acked)) == MESSAGES  # no two requests were told the same offset
    wanted: dict[TopicPartition, list[int]] = {}
    for partition, offset in acked:
        wanted.setdefault(TopicPartition(settings.topic, partition), []).append(offset)
    records = await _records(settings, wanted)
    for (partition, offset), message in zip(acked, messages, strict=True):
        assert records[(partition, offset)] == message.encode()


@pytest.mark.timeout(60)
async def test_a_broker_that_does_not_answer_fails_every_waiting_request(
    settings: Settings, core: CoreResources
) -> None:
    from services.errors import UnavailableError  # noqa: PLC0415

    item_id = fresh_id("batch")
    async with open_producer(settings) as producer:
        await producer.publish(_message(item_id, -1))
        assert producer.batcher is not None
        producer.batcher.timeout_s = 0.0  # every batch's deadline passed before its ack
        results = await asyncio.gather(
            *(producer.publish(_message(item_id, n)) for n in range(20)), return_exceptions=True
        )
    assert all(isinstance(result, UnavailableError) for result in results), results
