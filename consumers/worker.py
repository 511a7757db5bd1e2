"""The consumer process: partition leases, batches, one transaction per partition batch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from services.errors import FencedError, UnavailableError
from services.failpoints import failpoint
from services.resources import CoreResources
from services.schema import MessageError, PurchaseMessage
from services.settings import Settings
from services.stockfilter.filter import Settlement
from services.store.batch import BatchResult, Lease, apply_batch
from services.store.decide import REJECTED, Record
from services.store.leases import acquire_lease, start_log_generation

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_S = 2.0
KafkaRecord: TypeAlias = ConsumerRecord[bytes, bytes]


def consumer_name(settings: Settings) -> str:
    return settings.consumer_name or f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class ConsumerStats:
    batches: int = 0
    applied: int = 0
    confirmed: int = 0
    rejected: int = 0
    fenced: int = 0


@dataclass
class LeaseBook:
    """The epochs this process holds, one per assigned partition."""

    epochs: dict[int, int] = field(default_factory=dict)


class LeaseListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment: bump the lease epoch in Postgres and seek to the stored offset."""

    def __init__(self, worker: PurchaseConsumer) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self.worker.leases.epochs.pop(tp.partition, None)
        if revoked:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in sorted(assigned, key=lambda t: t.partition):
            await self.worker.take_partition(tp)
        if assigned:
            log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))


class PurchaseConsumer:
    def __init__(self, settings: Settings, core: CoreResources, kafka: AIOKafkaConsumer) -> None:
        self.settings = settings
        self.core = core
        self.kafka = kafka
        self.name = consumer_name(settings)
        self.leases = LeaseBook()
        self.stats = ConsumerStats()

    async def take_partition(self, tp: TopicPartition) -> None:
        grant = await acquire_lease(self.core.pool, tp.topic, tp.partition, self.name)
        start = grant.next_offset
        end = (await self.kafka.end_offsets([tp]))[tp]
        if end < grant.next_offset:
            # The broker lost this partition's log: read the new one from its start.
            begin = (await self.kafka.beginning_offsets([tp]))[tp]
            regrant = await start_log_generation(
                self.core.pool, tp.topic, tp.partition, grant.epoch, begin
            )
            if regrant is None:
                return
            log.warning(
                "partition %d: log end %d is below stored offset %d; new log generation %d",
                tp.partition,
                end,
                grant.next_offset,
                regrant.log_generation,
            )
            start = regrant.next_offset
        self.leases.epochs[tp.partition] = grant.epoch
        self.kafka.seek(tp, start)

    async def run(self, stop: asyncio.Event) -> None:
        backoff_s = 0.1
        while not stop.is_set():
            try:
                batches = await self.kafka.getmany(
                    timeout_ms=200, max_records=self.settings.batch_max_records
                )
                for tp, messages in batches.items():
                    await self.handle(tp, messages)
                backoff_s = 0.1
            except (UnavailableError, KafkaError) as exc:
                log.warning("backing off %.1fs: %s", backoff_s, exc)
                await _wait(stop, backoff_s)
                backoff_s = min(backoff_s * 2, RETRY_BACKOFF_MAX_S)

    async def handle(
        self, tp: TopicPartition, messages: list[ConsumerRecord[bytes, bytes]]
    ) -> None:
        epoch = self.leases.epochs.get(tp.partition)
        if epoch is None or not messages:
            return
        records = _decode(messages)
        first_offset = int(messages[0].offset)
        failpoint(self.settings.failpoint, "consumer.before_apply")
        try:
            async with self.core.pool.acquire() as conn:
                result = await apply_batch(conn, Lease(tp.topic, tp.partition, epoch), records)
        except FencedError as exc:
            self.stats.fenced += 1
            self.leases.epochs.pop(tp.partition, None)
            log.warning("fenced, dropping partition %d: %s", tp.partition, exc)
            return
        except UnavailableError:
            # Nothing was written: read the same records again after the backoff.
            self.kafka.seek(tp, first_offset)
            raise
        failpoint(self.settings.failpoint, "consumer.after_commit")
        await self.after_commit(tp, result)
        failpoint(self.settings.failpoint, "consumer.after_settle")

    async def after_commit(self, tp: TopicPartition, result: BatchResult) -> None:
        decisions = result.decisions.decisions
        self.stats.batches += 1
        self.stats.applied += len(result.decisions.new)
        self.stats.confirmed += sum(1 for d in result.decisions.new if d.status != REJECTED)
        self.stats.rejected += sum(1 for d in result.decisions.new if d.status == REJECTED)
        settlements = [
            Settlement(m.item_id, m.shard, m.purchase_id, m.quantity, d.status == REJECTED)
            for d in decisions
            for m in (d.record.message,)
        ]
        try:
            await self.core.stock.settle(settlements)
        except UnavailableError as exc:
            # The reconciler settles these later from Postgres' final states.
            log.warning("settling %d reservations failed: %s", len(settlements), exc)
        try:
            # Kafka's committed offset only feeds lag metrics: the truth is in Postgres.
            await self.kafka.commit({tp: result.next_offset})
        except KafkaError as exc:
            log.debug("kafka offset commit failed: %s", exc)


def _decode(messages: list[KafkaRecord]) -> list[Record]:
    records = []
    for message in messages:
        offset = int(message.offset)
        try:
            records.append(Record(offset, PurchaseMessage.decode(message.value)))
        except MessageError as exc:
            log.error("skipping offset %d: %s", offset, exc)
    return records


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
