"""The consumer process: partition leases, batches, one transaction per partition batch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from consumers.logcheck import records_at
from services.errors import FencedError, FlashsaleError, UnavailableError
from services.failpoints import failpoint
from services.resources import CoreResources
from services.schema import MessageError, PurchaseMessage
from services.settings import Settings
from services.stockfilter.filter import Settlement
from services.store.batch import BatchResult, Lease, apply_batch
from services.store.db import database_errors
from services.store.decide import REJECTED, Record
from services.store.leases import LeaseGrant, acquire_lease, start_log_generation

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_S = 2.0


class RejoinStuckError(FlashsaleError):
    """The group rebalance this member waits for does not complete."""


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
    """On assignment: take the leases (bump epochs) and seek to the stored offsets."""

    def __init__(self, worker: PurchaseConsumer) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.worker.unassigned_since = time.monotonic()
        for tp in revoked:
            self.worker.leases.epochs.pop(tp.partition, None)
            self.worker.pending.discard(tp)
        if revoked:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.worker.unassigned_since = None
        if not assigned:
            return
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        # Nothing is read from a partition until its lease is ours.
        self.worker.kafka.pause(*assigned)
        self.worker.pending.update(assigned)
        try:
            await self.worker.take_pending()
        except (UnavailableError, KafkaError) as exc:
            log.warning("taking leases later: %s", exc)


class PurchaseConsumer:
    def __init__(self, settings: Settings, core: CoreResources, kafka: AIOKafkaConsumer) -> None:
        self.settings = settings
        self.core = core
        self.kafka = kafka
        self.name = consumer_name(settings)
        self.leases = LeaseBook()
        self.pending: set[TopicPartition] = set()
        self.unassigned_since: float | None = time.monotonic()
        # The rebalance listener and the poll loop both take pending leases: one at a time.
        self._taking = asyncio.Lock()
        self.stats = ConsumerStats()

    def reset(self, kafka: AIOKafkaConsumer) -> None:
        """A new group membership: every lease must be taken again."""
        self.kafka = kafka
        self.leases.epochs.clear()
        self.pending.clear()
        self.unassigned_since = time.monotonic()

    def check_not_stuck(self) -> None:
        since = self.unassigned_since
        if since is not None and time.monotonic() - since > self.settings.rejoin_stuck_s:
            raise RejoinStuckError(f"no assignment for {time.monotonic() - since:.0f}s")

    async def take_pending(self) -> None:
        """Lease every assigned partition not yet ours, checking its log is the one we know."""
        async with self._taking:
            await self._take(sorted(self.pending, key=lambda t: t.partition))

    async def _take(self, tps: list[TopicPartition]) -> None:
        if not tps:
            return
        grants = {
            tp: await acquire_lease(self.core.pool, tp.topic, tp.partition, self.name) for tp in tps
        }
        lost = await self._lost_logs(grants)
        for tp, grant in grants.items():
            start: int | None = grant.next_offset
            if tp in lost:
                start = await self._new_generation(tp, grant)
            if start is None:
                continue
            self.leases.epochs[tp.partition] = grant.epoch
            self.kafka.seek(tp, start)
            self.pending.discard(tp)
            self.kafka.resume(tp)

    async def _lost_logs(self, grants: dict[TopicPartition, LeaseGrant]) -> set[TopicPartition]:
        ends = await self.kafka.end_offsets(list(grants))
        lost = {tp for tp, grant in grants.items() if ends[tp] < grant.next_offset}
        wanted = {
            tp: grant.next_offset - 1
            for tp, grant in grants.items()
            if tp not in lost and grant.next_offset > 0 and grant.last_purchase_id
        }
        seen = await records_at(self.settings.kafka_bootstrap, wanted)
        # A log we could not check counts as lost: reading it again from its start
        # costs time, while skipping a new log's records would lose purchases.
        return lost | {tp for tp in wanted if seen.get(tp) != grants[tp].last_purchase_id}

    async def _new_generation(self, tp: TopicPartition, grant: LeaseGrant) -> int | None:
        """The broker lost this partition's log: read the new one from its start."""
        begin = (await self.kafka.beginning_offsets([tp]))[tp]
        regrant = await start_log_generation(
            self.core.pool, tp.topic, tp.partition, grant.epoch, begin
        )
        if regrant is None:
            return None
        log.warning(
            "partition %d: the log is not the one applied up to offset %d; "
            "reading the new log from %d as generation %d",
            tp.partition,
            grant.next_offset,
            begin,
            regrant.log_generation,
        )
        return regrant.next_offset

    async def run(self, stop: asyncio.Event) -> None:
        backoff_s = 0.1
        while not stop.is_set():
            self.check_not_stuck()
            try:
                if self.pending:
                    await self.take_pending()
                batches = await self.kafka.getmany(
                    timeout_ms=200, max_records=self.settings.batch_max_records
                )
                await self.handle_all(batches)
                backoff_s = 0.1
            except (UnavailableError, KafkaError) as exc:
                log.warning("backing off %.1fs: %s", backoff_s, exc)
                await _wait(stop, backoff_s)
                backoff_s = min(backoff_s * 2, RETRY_BACKOFF_MAX_S)

    async def handle_all(self, batches: dict[TopicPartition, list[KafkaRecord]]) -> None:
        """Apply each partition's batch; after a failure, rewind every batch not applied."""
        failure: UnavailableError | None = None
        for tp, messages in batches.items():
            if failure is not None:
                if messages:
                    self.kafka.seek(tp, messages[0].offset)
                continue
            try:
                await self.handle(tp, messages)
            except UnavailableError as exc:
                failure = exc
        if failure is not None:
            raise failure

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
            async with database_errors(), self.core.pool.acquire() as conn:
                lease = Lease(tp.topic, tp.partition, epoch, self.name)
                result = await apply_batch(conn, lease, records)
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
        # A duplicate copy gives its units back: its reservation (if it still has
        # one) is a second one, made by a retry after Redis forgot the first.
        settlements = [
            Settlement(
                d.record.message.item_id,
                d.record.message.shard,
                d.record.message.purchase_id,
                d.record.message.quantity,
                give_back=d.duplicate or d.status == REJECTED,
            )
            for d in decisions
        ]
        try:
            await self.core.stock.settle(settlements)
        except UnavailableError as exc:
            # The reconciler settles these later from Postgres' final states.
            log.warning("settling %d reservations failed: %s", len(settlements), exc)
        # No Kafka offset commit: the offset lives in Postgres with the orders, and
        # the group coordinator's retries after a broker restart would only stall us.


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
