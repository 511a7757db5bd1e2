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
from aiokafka.partitioner import DefaultPartitioner

from consumers.logcheck import LogVerdict, RecordAt, judge_log, records_at
from consumers.metrics import ConsumerMetrics
from consumers.tracing import TracedRecord, trace_batch
from services.errors import FencedError, FlashsaleError, UnavailableError
from services.failpoints import failpoint
from services.resources import CoreResources
from services.schema import MessageError, PurchaseMessage
from services.settings import Settings
from services.stockfilter.filter import Settlement
from services.stockfilter.returns import announce_returned
from services.store.batch import BatchResult, Lease, apply_batch
from services.store.db import database_errors
from services.store.decide import CANCELLED, EXPIRED, PAID, REJECTED, Record, Target
from services.store.holds import due_partitions, expire_due
from services.store.leases import (
    LeaseGrant,
    acquire_lease,
    acquire_quiet_lease,
    start_log_generation,
)
from services.tracing import NO_TRACING, Tracing

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_S = 2.0
# How often the poll loop retries partitions whose lease or log check failed: the
# log check can block the loop for its whole timeout.
PENDING_RETRY_S = 1.0
# Each unanswered log check blocks the poll loop for its timeout: retries back off
# (doubling up to this), so the partitions that do answer keep being read.
PENDING_RETRY_MAX_S = 16.0
# A log that answers no check at all this many times in a row is read again from
# its start (a new generation): slow on a big log, never wrong (Postgres dedupes),
# and a partition must not stall for good on a broker that never answers (seen on
# the embedded broker after a restart recreated the topic under a live producer).
LOG_CHECK_ATTEMPTS = 3
OFFSETS_TIMEOUT_S = 5.0
# How often the owner of a partition expires its holds past pay_by: the longest an
# expired hold's units wait before they go back on sale (a late pay does not wait:
# its own batch expires the purchase).
EXPIRY_SWEEP_S = 1.0


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
    cancelled: int = 0
    paid: int = 0
    expired: int = 0
    fenced: int = 0
    reconciler_passes: int = 0
    reconciler_failures: int = 0


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
        # A batch fetched before the revoke may still be handled: no further ones.
        self.worker.kafka.pause(*(tp for tp in revoked if tp in self.worker.kafka.assignment()))
        for tp in revoked:
            self.worker.forget(tp)
        if revoked:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.worker.unassigned_since = None
        if not assigned:
            return
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        # Nothing is read from a partition until its lease is ours.
        self.worker.kafka.pause(*assigned)
        self.worker.mark_assigned(assigned)
        started = time.monotonic()
        try:
            await self.worker.take_pending(in_rebalance=True)
        except (UnavailableError, KafkaError) as exc:
            log.warning("taking leases later: %s", exc)
            return
        # No heartbeat is sent while this runs: a member still here a session
        # timeout after its SyncGroup is evicted, so the time is worth seeing.
        log.info(
            "leases taken in %.2fs; still pending: %s",
            time.monotonic() - started,
            sorted(tp.partition for tp in self.worker.pending),
        )


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
        self.kafka = kafka
        self.name = consumer_name(settings)
        self.leases = LeaseBook()
        # Assigned partitions not read yet (paused): lease or log check still to do.
        self.pending: set[TopicPartition] = set()
        # When the rebalance listener saw each pending partition assigned (monotonic).
        self.assigned_at: dict[TopicPartition, float] = {}
        # Leases taken whose log check has not answered yet: retried without a new bump.
        self.grants: dict[TopicPartition, LeaseGrant] = {}
        # Assigned partitions another member holds the lease of: not read (paused)
        # until a rebalance takes them away; since when (monotonic).
        self.blocked_since: dict[TopicPartition, float] = {}
        # Log checks in a row that got no answer, per pending partition.
        self.unanswered: dict[TopicPartition, int] = {}
        self.unassigned_since: float | None = time.monotonic()
        self._retry_pending_at = 0.0
        self._sweep_at = 0.0
        # The rebalance listener and the poll loop both take pending leases: one at a time.
        self._taking = asyncio.Lock()
        self.stats = ConsumerStats()
        self.metrics = metrics if metrics is not None else ConsumerMetrics()
        # The next offset to apply, per partition we read (for the lag gauge).
        self.next_offsets: dict[TopicPartition, int] = {}
        self._partitioner = DefaultPartitioner()

    def reset(self, kafka: AIOKafkaConsumer) -> None:
        """A new group membership: every lease must be taken again."""
        self.kafka = kafka
        self.leases.epochs.clear()
        self.pending.clear()
        self.assigned_at.clear()
        self.grants.clear()
        self.blocked_since.clear()
        self.unanswered.clear()
        for tp in list(self.next_offsets):
            self._drop_lag(tp)
        self.unassigned_since = time.monotonic()

    def owns_item(self, item_id: str) -> bool:
        """Whether this member holds the lease of the partition the item's purchases
        go to (the producers' default partitioner, keyed by item id)."""
        partitions = self.kafka.partitions_for_topic(self.settings.topic)
        if not partitions:
            return False
        ordered = sorted(partitions)
        partition = self._partitioner(item_id.encode(), ordered, ordered)
        return partition in self.leases.epochs

    def mark_assigned(self, assigned: list[TopicPartition]) -> None:
        now = time.monotonic()
        for tp in assigned:
            self.pending.add(tp)
            self.assigned_at[tp] = now
            self.blocked_since.pop(tp, None)

    def forget(self, tp: TopicPartition) -> None:
        """The partition is not ours (revoked, or no longer in Kafka's assignment)."""
        self.leases.epochs.pop(tp.partition, None)
        self.pending.discard(tp)
        self.assigned_at.pop(tp, None)
        self.grants.pop(tp, None)
        self.blocked_since.pop(tp, None)
        self.unanswered.pop(tp, None)
        self._drop_lag(tp)

    def _drop_lag(self, tp: TopicPartition) -> None:
        if self.next_offsets.pop(tp, None) is not None:
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(str(tp.partition))

    def observe_lag(self) -> None:
        """Lag of each partition we read, from the high watermarks the fetches brought."""
        for tp, next_offset in self.next_offsets.items():
            highwater = self.kafka.highwater(tp)
            if highwater is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(highwater - next_offset, 0))

    def check_not_stuck(self) -> None:
        now = time.monotonic()
        since = self.unassigned_since
        if since is not None and now - since > self.settings.rejoin_stuck_s:
            raise RejoinStuckError(f"no assignment for {now - since:.0f}s")
        # A partition whose lease another member holds is normally revoked by the
        # next rebalance; if none comes, a fresh membership gets a fresh assignment.
        assigned = self.kafka.assignment()
        for tp in [tp for tp in self.blocked_since if tp not in assigned]:
            del self.blocked_since[tp]
        blocked = sorted(
            tp.partition
            for tp, since in self.blocked_since.items()
            if now - since > self.settings.rejoin_stuck_s
        )
        if blocked:
            raise RejoinStuckError(f"partitions {blocked} assigned to us but leased elsewhere")

    async def take_pending(self, in_rebalance: bool = False) -> None:
        """Lease every assigned partition not yet ours, checking its log is the one we know."""
        async with self._taking:
            await self._take(sorted(self.pending, key=lambda t: t.partition), in_rebalance)
            tries = max(self.unanswered.values(), default=0)
            delay_s = min(PENDING_RETRY_S * 2**tries, PENDING_RETRY_MAX_S)
            self._retry_pending_at = time.monotonic() + delay_s

    async def _take(self, tps: list[TopicPartition], in_rebalance: bool) -> None:
        assigned = self.kafka.assignment()
        for tp in tps:
            if tp not in assigned:
                self.forget(tp)
            elif tp not in self.grants:
                grant = await self._acquire(tp, in_rebalance)
                if grant is None:
                    self._leased_elsewhere(tp)
                else:
                    self.grants[tp] = grant
        ready = {tp: self.grants[tp] for tp in tps if tp in self.grants}
        if not ready:
            return
        for tp, start in (await self._log_starts(ready)).items():
            if start is None:
                self._leased_elsewhere(tp)
            else:
                self._start_reading(tp, ready[tp].epoch, start)

    async def _acquire(self, tp: TopicPartition, in_rebalance: bool) -> LeaseGrant | None:
        """Bump the epoch: only for a partition Kafka assigned to us, in a current membership.

        The rebalance listener runs right after the group's SyncGroup answered:
        its assignment is current, so it bumps unconditionally. A retry from the
        poll loop (the listener's attempt failed) may run on an assignment we
        lost while paused (SIGSTOP, GC) past the session timeout: on waking, our
        own loop can run before the heartbeat learns of the eviction. A member is
        evicted only a session timeout after its last heartbeat, which came no
        earlier than the assignment, so the new owner bumps at least a session
        after it. The retry therefore bumps only if nobody wrote the lease row
        later than half a session after our assignment: the previous owner's
        last batches land before that, the new owner's bump after.
        """
        if in_rebalance:
            return await acquire_lease(self.core.pool, tp.topic, tp.partition, self.name)
        assigned_for_s = time.monotonic() - self.assigned_at.get(tp, 0.0)
        quiet_for_s = assigned_for_s - self.settings.session_timeout_s / 2
        grant = await acquire_quiet_lease(
            self.core.pool, tp.topic, tp.partition, self.name, quiet_for_s
        )
        if grant is None:
            log.warning(
                "partition %d: the lease was taken after it was assigned to us; not taking it back",
                tp.partition,
            )
        return grant

    async def _log_starts(
        self, grants: dict[TopicPartition, LeaseGrant]
    ) -> dict[TopicPartition, int | None]:
        """Where to start reading each partition whose log answered (None: fenced).

        Partitions left out stay pending: the broker did not answer the check.
        """
        ends, begins = await self._offsets(list(grants))
        tps = list(ends)

        def verdict(tp: TopicPartition, answer: RecordAt | None) -> LogVerdict:
            grant = grants[tp]
            return judge_log(
                grant.next_offset, grant.last_purchase_id, ends[tp], begins[tp], answer
            )

        wanted = {
            tp: grants[tp].next_offset - 1 for tp in tps if verdict(tp, None) is LogVerdict.UNKNOWN
        }
        seen = await records_at(self.settings.kafka_bootstrap, wanted)
        starts: dict[TopicPartition, int | None] = {}
        for tp in tps:
            judged = verdict(tp, seen.get(tp))
            if judged is LogVerdict.UNKNOWN:
                self.unanswered[tp] = self.unanswered.get(tp, 0) + 1
                if self.unanswered[tp] < LOG_CHECK_ATTEMPTS:
                    log.warning(
                        "partition %d: the log check got no answer; asking again", tp.partition
                    )
                    continue
                log.warning(
                    "partition %d: %d log checks got no answer; reading the log from its start",
                    tp.partition,
                    self.unanswered[tp],
                )
                judged = LogVerdict.LOST
            self.unanswered.pop(tp, None)
            if judged is LogVerdict.LOST:
                grant = grants[tp]
                log.warning(
                    "partition %d: log check failed: applied up to %d (last purchase %s),"
                    " broker log %d..%d, record there %r",
                    tp.partition,
                    grant.next_offset,
                    grant.last_purchase_id,
                    begins[tp],
                    ends[tp],
                    seen.get(tp),
                )
            if judged is LogVerdict.SAME:
                starts[tp] = grants[tp].next_offset
            else:
                starts[tp] = await self._new_generation(tp, grants[tp], begins[tp])
        return starts

    async def _offsets(
        self, tps: list[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """End and beginning offsets of the partitions that answer, each asked on
        its own: after a broker restart the embedded broker may lack some of them
        (docs/faults.md), and one missing partition must not keep the others from
        being leased. UnavailableError when none answers."""

        async def one(tp: TopicPartition) -> tuple[TopicPartition, int, int] | None:
            try:
                # aiokafka would wait its whole request timeout (40 s) on a broker
                # that restarts: a member then takes no lease for that long.
                async with asyncio.timeout(OFFSETS_TIMEOUT_S):
                    ends = await self.kafka.end_offsets([tp])
                    begins = await self.kafka.beginning_offsets([tp])
            except (TimeoutError, KafkaError, KeyError) as exc:
                # A partition the broker refuses or leaves out of its answer waits
                # for the next round like a silent one; the others are leased now.
                log.debug("partition %d: no offsets: %r", tp.partition, exc)
                return None
            return tp, ends[tp], begins[tp]

        answers = [a for a in await asyncio.gather(*(one(tp) for tp in tps)) if a is not None]
        if not answers:
            raise UnavailableError("the broker did not give the partitions' offsets")
        silent = sorted(tp.partition for tp in tps if tp not in {a[0] for a in answers})
        if silent:
            log.warning("partitions %s: the broker gave no offsets; asking again later", silent)
        return {tp: end for tp, end, _ in answers}, {tp: begin for tp, _, begin in answers}

    async def _new_generation(
        self, tp: TopicPartition, grant: LeaseGrant, begin: int
    ) -> int | None:
        """The broker lost this partition's log: read the new one from its start."""
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

    def _start_reading(self, tp: TopicPartition, epoch: int, start: int) -> None:
        self.grants.pop(tp, None)
        self.assigned_at.pop(tp, None)
        self.pending.discard(tp)
        self.leases.epochs[tp.partition] = epoch
        self.next_offsets[tp] = start
        self.kafka.seek(tp, start)
        self.kafka.resume(tp)

    def _leased_elsewhere(self, tp: TopicPartition) -> None:
        """Another member took the lease after Kafka assigned the partition to us: our
        assignment is stale. Taking the lease back would fence the rightful owner,
        so stop reading and wait for the rebalance that takes the partition away."""
        self.leases.epochs.pop(tp.partition, None)
        self.pending.discard(tp)
        self.assigned_at.pop(tp, None)
        self.grants.pop(tp, None)
        self._drop_lag(tp)
        if tp in self.kafka.assignment():
            self.kafka.pause(tp)
            self.blocked_since.setdefault(tp, time.monotonic())

    async def run(self, stop: asyncio.Event) -> None:
        backoff_s = 0.1
        while not stop.is_set():
            self.check_not_stuck()
            try:
                if self.pending and time.monotonic() >= self._retry_pending_at:
                    await self.take_pending()
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
        if tp in self.next_offsets:
            self.next_offsets[tp] = int(messages[-1].offset) + 1
        if self.tracing.enabled:
            self._trace(tp, epoch, started_ns, messages, result)
        failpoint(self.settings.failpoint, "consumer.after_commit")
        await self.after_commit(tp, result)
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
            lease = Lease(self.settings.topic, partition, epoch, self.name)
            try:
                async with database_errors(), self.core.pool.acquire() as conn:
                    expired = await expire_due(conn, lease)
            except FencedError as exc:
                self.stats.fenced += 1
                if self.leases.epochs.get(partition) == epoch:
                    log.warning("fenced, stop reading partition %d: %s", partition, exc)
                    self._leased_elsewhere(TopicPartition(self.settings.topic, partition))
                continue
            if expired:
                log.info("partition %d: %d hold(s) expired", partition, len(expired))
                self._count(EXPIRED, len(expired))
                await self.return_units(expired)

    def _count(self, status: str, purchases: int) -> None:
        """Purchases moved on from confirmed (cancelled, paid, expired)."""
        if not purchases:
            return
        setattr(self.stats, status, getattr(self.stats, status) + purchases)
        self.metrics.purchases.labels(status).inc(purchases)

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
        self._leased_elsewhere(tp)
        self._rewind(tp, first_offset)

    def _rewind_unleased(self, tp: TopicPartition, first_offset: int) -> None:
        """Records of a partition we hold no lease for: never let the position run
        past what was applied."""
        self._rewind(tp, first_offset)
        if tp in self.kafka.assignment() and tp not in self.kafka.paused():
            # Read without a lease and not waiting for one (pending, revoked and
            # blocked partitions are paused): nothing would ever seek it back.
            log.warning("partition %d: records without a lease; pausing it", tp.partition)
            self._leased_elsewhere(tp)

    def _rewind(self, tp: TopicPartition, first_offset: int) -> None:
        if tp in self.kafka.assignment():
            self.kafka.seek(tp, first_offset)

    async def after_commit(self, tp: TopicPartition, result: BatchResult) -> None:
        decisions = result.decisions.decisions
        self.stats.batches += 1
        self.stats.applied += len(result.decisions.new)
        self.stats.confirmed += sum(1 for d in result.decisions.new if d.status != REJECTED)
        self.stats.rejected += sum(1 for d in result.decisions.new if d.status == REJECTED)
        rejected = sum(1 for d in result.decisions.new if d.status == REJECTED)
        self.metrics.purchases.labels("confirmed").inc(len(result.decisions.new) - rejected)
        self.metrics.purchases.labels("rejected").inc(rejected)
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
        changes = result.decisions
        for status in (CANCELLED, PAID, EXPIRED):
            self._count(status, len(changes.applied(status)))
        await self.return_units(changes.returned)
        # No Kafka offset commit: the offset lives in Postgres with the orders, and
        # the group coordinator's retries after a broker restart would only stall us.

    async def return_units(self, cancelled: list[Target]) -> None:
        """Put cancelled or expired purchases' units back on sale. They have no
        reservation record left, so they go to the purchase's home shard; a missing
        shard, or Redis failing here, is made good by the reconciler's drift repair."""
        if not cancelled:
            return
        stock = self.core.stock
        try:
            for target in cancelled:
                shard = stock.home_shard(target.purchase_id)
                if not await stock.adjust(target.item_id, shard, target.quantity):
                    log.warning(
                        "item %s: shard %d is missing; the repair returns %d unit(s)",
                        target.item_id,
                        shard,
                        target.quantity,
                    )
            await announce_returned(self.core.redis, sorted({t.item_id for t in cancelled}))
        except UnavailableError as exc:
            log.warning("returning %d purchase(s) units failed: %s", len(cancelled), exc)


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
