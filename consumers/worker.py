"""The consumer's poll loop: one transaction per partition batch, under its lease.

Taking leases is `consumers.leasing`, checking a log `consumers.logcheck`, what
follows a commit `consumers.settle`; this module reads batches and applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from consumers.leasing import PartitionLeases
from consumers.metrics import ConsumerMetrics
from consumers.settle import BatchOutcomes, ConsumerStats, return_units, settle_reservations
from consumers.tracing import TracedRecord, trace_batch
from services.applygate import ApplyGate
from services.errors import FencedError, UnavailableError
from services.failpoints import failpoint
from services.resources import CoreResources
from services.schema import MessageError, PurchaseMessage
from services.settings import Settings
from services.store.batch import BatchResult, Lease, apply_batch
from services.store.db import database_errors
from services.store.decide import EXPIRED, Record
from services.store.holds import due_partitions, expire_due
from services.tracing import NO_TRACING, Tracing

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_S = 2.0
# How often the owner of a partition expires its holds past pay_by: the longest an
# expired hold's units wait before they go back on sale (a late pay does not wait:
# its own batch expires the purchase).
EXPIRY_SWEEP_S = 1.0

KafkaRecord: TypeAlias = ConsumerRecord[bytes, bytes]


def consumer_name(settings: Settings) -> str:
    return settings.consumer_name or f"{socket.gethostname()}-{os.getpid()}"


class PurchaseConsumer:
    def __init__(
        self,
        settings: Settings,
        core: CoreResources,
        kafka: AIOKafkaConsumer,
        metrics: ConsumerMetrics | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.settings = settings
        self.tracing = tracing
        self.core = core
        self.name = consumer_name(settings)
        self.stats = ConsumerStats()
        self.metrics = metrics if metrics is not None else ConsumerMetrics()
        self.outcomes = BatchOutcomes(self.stats, self.metrics)
        self.leases = PartitionLeases(settings, core, kafka, self.name, self.metrics)
        self._sweep_at = 0.0
        self._partitioner = DefaultPartitioner()
        # Held from each commit to its settle; this process's reconciler reads drift
        # exclusively (services.reconciler).
        self.gate = ApplyGate()

    @property
    def kafka(self) -> AIOKafkaConsumer:
        return self.leases.kafka

    def reset(self, kafka: AIOKafkaConsumer) -> None:
        """A new group membership: every lease must be taken again."""
        self.leases.reset(kafka)

    def owns_item(self, item_id: str) -> bool:
        """Whether this member holds the lease of the partition the item's purchases
        go to (the producers' default partitioner, keyed by item id)."""
        partitions = self.kafka.partitions_for_topic(self.settings.topic)
        if not partitions:
            return False
        ordered = sorted(partitions)
        partition = self._partitioner(item_id.encode(), ordered, ordered)
        return partition in self.leases.epochs

    def observe_lag(self) -> None:
        """Lag of each partition we read, from the high watermarks the fetches brought."""
        for tp, next_offset in self.leases.next_offsets.items():
            highwater = self.kafka.highwater(tp)
            if highwater is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(highwater - next_offset, 0))

    async def run(self, stop: asyncio.Event) -> None:
        backoff_s = 0.1
        while not stop.is_set():
            self.leases.check_not_stuck()
            try:
                leases = self.leases
                if leases.pending and time.monotonic() >= leases.retry_pending_at:
                    await leases.take_pending()
                if time.monotonic() >= self._sweep_at:
                    self._sweep_at = time.monotonic() + EXPIRY_SWEEP_S
                    await self.expire_holds()
                # The limit counts records of all partitions together: per
                # partition, so each lease's batch stays as large under load.
                partitions = max(1, len(self.leases.epochs))
                batches = await self.kafka.getmany(
                    timeout_ms=200, max_records=self.settings.batch_max_records * partitions
                )
                await self.handle_all(batches)
                self.observe_lag()
                backoff_s = 0.1
            except (UnavailableError, KafkaError) as exc:
                log.warning("backing off %.1fs: %s", backoff_s, exc)
                await _wait(stop, backoff_s)
                backoff_s = min(backoff_s * 2, RETRY_BACKOFF_MAX_S)

    async def handle_all(self, batches: dict[TopicPartition, list[KafkaRecord]]) -> None:
        """Apply the partitions' batches side by side, each in its own transaction
        on its own connection: their leases are independent, and one after another
        the process waited on Postgres once per partition. A batch that fails
        rewinds its own partition; the first failure is raised once all are done."""
        outcomes = await asyncio.gather(
            *(self.handle(tp, messages) for tp, messages in batches.items()),
            return_exceptions=True,
        )
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        for failure in failures:
            if not isinstance(failure, UnavailableError):
                raise failure
        if failures:
            raise failures[0]

    async def handle(
        self, tp: TopicPartition, messages: list[ConsumerRecord[bytes, bytes]]
    ) -> None:
        if not messages:
            return
        first_offset = int(messages[0].offset)
        epoch = self.leases.epochs.get(tp.partition)
        if epoch is None:
            self._rewind_unleased(tp, first_offset)
            return
        async with self.gate.applying():
            await self._apply(tp, epoch, messages)

    async def _apply(self, tp: TopicPartition, epoch: int, messages: list[KafkaRecord]) -> None:
        first_offset = int(messages[0].offset)
        records = _decode(messages)
        failpoint(self.settings.failpoint, "consumer.before_apply")
        started = time.perf_counter()
        started_ns = time.time_ns() if self.tracing.enabled else 0
        try:
            async with database_errors(), self.core.pool.acquire() as conn:
                lease = Lease(tp.topic, tp.partition, epoch, self.name)
                result = await apply_batch(conn, lease, records)
        except FencedError as exc:
            self.stats.fenced += 1
            self.metrics.fenced.inc()
            self._fenced(tp, epoch, first_offset, exc)
            return
        except UnavailableError:
            # Nothing was written: read the same records again after the backoff.
            self.kafka.seek(tp, first_offset)
            raise
        self.metrics.apply_latency.observe(time.perf_counter() - started)
        self.metrics.batch_records.observe(len(messages))
        if tp in self.leases.next_offsets:
            self.leases.next_offsets[tp] = int(messages[-1].offset) + 1
        if self.tracing.enabled:
            self._trace(tp, epoch, started_ns, messages, result)
        failpoint(self.settings.failpoint, "consumer.after_commit")
        await self.after_commit(result)
        failpoint(self.settings.failpoint, "consumer.after_settle")

    async def expire_holds(self) -> None:
        """Expire the holds past pay_by of every partition we hold, each in a
        transaction fenced by its lease, then put their units back on sale.
        Between two batches of the poll loop: one writer per partition at a time."""
        held = dict(self.leases.epochs)
        if not held:
            return
        async with database_errors(), self.core.pool.acquire() as conn:
            due = await due_partitions(conn, self.settings.topic, sorted(held))
        for partition in sorted(due):
            epoch = held[partition]
            async with self.gate.applying():
                await self._expire(partition, epoch)

    async def _expire(self, partition: int, epoch: int) -> None:
        lease = Lease(self.settings.topic, partition, epoch, self.name)
        try:
            async with database_errors(), self.core.pool.acquire() as conn:
                expired = await expire_due(conn, lease)
        except FencedError as exc:
            self.stats.fenced += 1
            if self.leases.epochs.get(partition) == epoch:
                log.warning("fenced, stop reading partition %d: %s", partition, exc)
                self.leases.leased_elsewhere(TopicPartition(self.settings.topic, partition))
            return
        if expired:
            log.info("partition %d: %d hold(s) expired", partition, len(expired))
            self.outcomes.moved_on(EXPIRED, len(expired))
            await return_units(self.core, expired)

    def _trace(
        self,
        tp: TopicPartition,
        epoch: int,
        started_ns: int,
        messages: list[KafkaRecord],
        result: BatchResult,
    ) -> None:
        decided = {d.record.offset: d for d in result.decisions.decisions}
        notified = set(result.decisions.notified_ids)
        traced = []
        for message in messages:
            offset = int(message.offset)
            decision = decided.get(offset)
            if decision is None:
                traced.append(TracedRecord(offset, message.headers))
                continue
            purchase = decision.record.message
            traced.append(
                TracedRecord(
                    offset,
                    message.headers,
                    purchase.purchase_id,
                    purchase.item_id,
                    decision.status,
                    decision.duplicate,
                    purchase.purchase_id in notified,
                )
            )
        trace_batch(self.tracing, tp.topic, tp.partition, epoch, started_ns, traced)

    def _fenced(self, tp: TopicPartition, epoch: int, first_offset: int, exc: FencedError) -> None:
        if self.leases.epochs.get(tp.partition) != epoch:
            # We got the partition back (a newer epoch of ours) or are taking it
            # back while this batch ran. That take seeks to the stored offset after
            # this batch was fetched, so these records are read again under the
            # new epoch; seeking to `first_offset` here could undo a new log
            # generation's start.
            log.info("partition %d: batch fenced by our own newer lease: %s", tp.partition, exc)
            return
        log.warning("fenced, stop reading partition %d: %s", tp.partition, exc)
        self.leases.leased_elsewhere(tp)
        self._rewind(tp, first_offset)

    def _rewind_unleased(self, tp: TopicPartition, first_offset: int) -> None:
        """Records of a partition we hold no lease for: never let the position run
        past what was applied."""
        self._rewind(tp, first_offset)
        if tp in self.kafka.assignment() and tp not in self.kafka.paused():
            # Read without a lease and not waiting for one (pending, revoked and
            # blocked partitions are paused): nothing would ever seek it back.
            log.warning("partition %d: records without a lease; pausing it", tp.partition)
            self.leases.leased_elsewhere(tp)

    def _rewind(self, tp: TopicPartition, first_offset: int) -> None:
        if tp in self.kafka.assignment():
            self.kafka.seek(tp, first_offset)

    async def after_commit(self, result: BatchResult) -> None:
        self.outcomes.applied(result)
        await settle_reservations(self.core, result)
        await return_units(self.core, result.decisions.returned)
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
