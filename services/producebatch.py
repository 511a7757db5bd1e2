"""Purchase messages of concurrent requests produced as one batch per partition.

aiokafka's `send` costs each message its own future, partition lookup, deadline
and accumulator append in Python (7 % of the gateway's CPU per admission under
load, py-spy). The messages one event-loop turn admits go out as one
`BatchBuilder` per partition instead: one `send_batch`, one deadline, one future
to wait on; each request still waits for the broker's ack of its own message
(acks=all) and learns its own offset (the batch's base + its place in it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.errors import UnavailableError

# aiokafka's partitioner signature: (key, all partitions, available ones) -> partition.
Partitioner = Callable[[bytes | None, list[int], list[int]], int]


@dataclass(slots=True)
class _Waiting:
    key: bytes
    value: bytes
    future: asyncio.Future[tuple[int, int]]


@dataclass
class ProduceBatcher:
    producer: AIOKafkaProducer
    partitioner: Partitioner  # the producer's own, so both paths agree on a key's partition
    topic: str
    timeout_s: float
    _waiting: dict[int, list[_Waiting]] = field(default_factory=dict)
    _scheduled: bool = False
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def partition_of(self, key: bytes) -> int | None:
        """The partition `send` would pick for `key` (the same lists it passes its
        partitioner), None before the topic's metadata is known: then the caller
        sends on its own, and `send` waits for the metadata."""
        cluster = self.producer.client.cluster
        partitions = cluster.partitions_for_topic(self.topic)
        if not partitions:
            return None
        available = cluster.available_partitions_for_topic(self.topic) or partitions
        return self.partitioner(key, list(partitions), list(available))

    def publish(self, partition: int, key: bytes, value: bytes) -> asyncio.Future[tuple[int, int]]:
        """(partition, offset) once the broker acknowledged the message."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, int]] = loop.create_future()
        self._waiting.setdefault(partition, []).append(_Waiting(key, value, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, {}
        for partition, messages in waiting.items():
            task = asyncio.ensure_future(self._send(partition, messages))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, partition: int, messages: list[_Waiting]) -> None:
        while messages:
            batch = self.producer.create_batch()
            offsets: list[int] = []
            for message in messages:
                appended = batch.append(key=message.key, value=message.value, timestamp=None)
                if appended is None:
                    break  # full: the rest go in the next batch
                offsets.append(appended.offset)
            if not offsets:  # larger than a whole batch: cannot be sent this way
                _fail(messages[:1], UnavailableError("purchase message larger than a batch"))
                messages = messages[1:]
                continue
            sent, messages = messages[: len(offsets)], messages[len(offsets) :]
            await self._send_batch(partition, batch, sent, offsets)

    async def _send_batch(
        self, partition: int, batch: object, sent: list[_Waiting], offsets: list[int]
    ) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                delivery = await self.producer.send_batch(batch, self.topic, partition=partition)
                metadata = await delivery
        except (KafkaError, OSError, TimeoutError) as exc:
            _fail(sent, UnavailableError(f"kafka produce failed: {exc!r}"))
            return
        except BaseException as exc:  # not swallowed: every waiter raises it (a fan-out point)
            _fail(sent, exc)
            raise
        for message, relative in zip(sent, offsets, strict=True):
            if not message.future.done():
                message.future.set_result((metadata.partition, metadata.offset + relative))

    async def close(self) -> None:
        """Let batches on their way finish (their requests are waiting for them)."""
        if self._scheduled:
            self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _fail(messages: list[_Waiting], error: BaseException) -> None:
    for message in messages:
        if not message.future.done():
            message.future.set_exception(error)
