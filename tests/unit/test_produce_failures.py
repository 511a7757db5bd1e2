"""services/producer.py tells a certain produce failure (the record never entered
aiokafka's batch) from an uncertain one (it may be in the broker's log), the
distinction a 503 rests on (gateway/producefault.py). A stand-in for aiokafka's
producer: only send() and its delivery future matter here."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, RequestTimedOutError
from aiokafka.partitioner import DefaultPartitioner

from services.errors import ProduceUncertainError, UnavailableError
from services.producer import PurchaseProducer
from services.schema import PurchaseMessage

PARTITIONS = 4
ITEM = "sku-uncertain"


class Cluster:
    def __init__(self, known: bool) -> None:
        self.known = known

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(PARTITIONS)) if self.known else None

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions_for_topic(topic)


class Producer:
    """send() raises `send_error`, or returns a delivery that fails with
    `delivery_error` or succeeds at offset 7."""

    def __init__(
        self,
        send_error: Exception | None = None,
        delivery_error: Exception | None = None,
        known: bool = True,
    ) -> None:
        self.send_error = send_error
        self.delivery_error = delivery_error
        self.client = SimpleNamespace(cluster=Cluster(known))

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[Any]:
        if self.send_error is not None:
            raise self.send_error
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.delivery_error is not None:
            delivery.set_exception(self.delivery_error)
        else:
            delivery.set_result(SimpleNamespace(partition=1, offset=7))
        return delivery


def producer(fake: Producer) -> PurchaseProducer:
    return PurchaseProducer(cast(AIOKafkaProducer, fake), "purchases", default_partitions=2)


def message() -> PurchaseMessage:
    return PurchaseMessage("p_1", "user-1", "key-1", ITEM, 1, 0, 0)


def expected_partition(count: int) -> int:
    partitions = list(range(count))
    return int(DefaultPartitioner()(ITEM.encode(), partitions, partitions))


@pytest.mark.parametrize("error", [KafkaConnectionError(), KafkaTimeoutError(), OSError()])
async def test_a_send_that_raised_is_a_certain_failure(error: Exception) -> None:
    with pytest.raises(UnavailableError) as raised:
        await producer(Producer(send_error=error)).publish(message())
    assert not isinstance(raised.value, ProduceUncertainError)


@pytest.mark.parametrize("error", [KafkaConnectionError(), RequestTimedOutError()])
async def test_a_delivery_that_failed_is_uncertain_and_names_its_partition(
    error: Exception,
) -> None:
    with pytest.raises(ProduceUncertainError) as raised:
        await producer(Producer(delivery_error=error)).publish(message())
    assert raised.value.partition == expected_partition(PARTITIONS)


async def test_a_delivery_that_succeeded_answers_where_it_went() -> None:
    assert await producer(Producer()).publish(message()) == (1, 7)


def test_without_metadata_the_partition_comes_from_the_settings_count() -> None:
    unknown = producer(Producer(known=False))
    assert unknown.partition_for(ITEM.encode()) == expected_partition(2)
