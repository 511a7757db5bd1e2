"""Which assigned partitions this member may read: taking their leases (fencing
epochs) and checking each log is the one applied, on assignment and on retry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumers.logcheck import log_starts
from consumers.metrics import ConsumerMetrics
from services.errors import FlashsaleError, UnavailableError
from services.resources import CoreResources
from services.settings import Settings
from services.store.leases import LeaseGrant, acquire_lease, acquire_quiet_lease

log = logging.getLogger(__name__)

# How often the poll loop retries partitions whose lease or log check failed: the
# log check can block the loop for its whole timeout.
PENDING_RETRY_S = 1.0
# Each unanswered log check blocks the poll loop for its timeout: retries back off
# (doubling up to this), so the partitions that do answer keep being read.
PENDING_RETRY_MAX_S = 16.0


class RejoinStuckError(FlashsaleError):
    """The group rebalance this member waits for does not complete."""


class PartitionLeases:
    """The partitions Kafka assigned us, and which of them we may read.

    A partition is read only once its lease (a bumped epoch in Postgres) is ours
    and its log is the one applied; until then it is pending, and paused.
    """

    def __init__(
        self,
        settings: Settings,
        core: CoreResources,
        kafka: AIOKafkaConsumer,
        name: str,
        metrics: ConsumerMetrics,
    ) -> None:
        self.settings = settings
        self.core = core
        self.kafka = kafka
        self.name = name
        self.metrics = metrics
        # partition -> the epoch of the lease we hold and read under.
        self.epochs: dict[int, int] = {}
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
        # The next offset to apply, per partition we read (for the lag gauge).
        self.next_offsets: dict[TopicPartition, int] = {}
        self.retry_pending_at = 0.0
        # The rebalance listener and the poll loop both take pending leases: one at a time.
        self._taking = asyncio.Lock()

    def reset(self, kafka: AIOKafkaConsumer) -> None:
        """A new group membership: every lease must be taken again."""
        self.kafka = kafka
        self.epochs.clear()
        self.pending.clear()
        self.assigned_at.clear()
        self.grants.clear()
        self.blocked_since.clear()
        self.unanswered.clear()
        for tp in list(self.next_offsets):
            self.drop_lag(tp)
        self.unassigned_since = time.monotonic()

    def mark_assigned(self, assigned: list[TopicPartition]) -> None:
        now = time.monotonic()
        for tp in assigned:
            self.pending.add(tp)
            self.assigned_at[tp] = now
            self.blocked_since.pop(tp, None)

    def forget(self, tp: TopicPartition) -> None:
        """The partition is not ours (revoked, or no longer in Kafka's assignment)."""
        self.epochs.pop(tp.partition, None)
        self.pending.discard(tp)
        self.assigned_at.pop(tp, None)
        self.grants.pop(tp, None)
        self.blocked_since.pop(tp, None)
        self.unanswered.pop(tp, None)
        self.drop_lag(tp)

    def drop_lag(self, tp: TopicPartition) -> None:
        if self.next_offsets.pop(tp, None) is not None:
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(str(tp.partition))

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
            self.retry_pending_at = time.monotonic() + delay_s

    async def _take(self, tps: list[TopicPartition], in_rebalance: bool) -> None:
        assigned = self.kafka.assignment()
        for tp in tps:
            if tp not in assigned:
                self.forget(tp)
            elif tp not in self.grants:
                grant = await self._acquire(tp, in_rebalance)
                if grant is None:
                    self.leased_elsewhere(tp)
                else:
                    self.grants[tp] = grant
        ready = {tp: self.grants[tp] for tp in tps if tp in self.grants}
        if not ready:
            return
        starts = await log_starts(
            self.kafka, self.core.pool, self.settings.kafka_bootstrap, ready, self.unanswered
        )
        for tp, start in starts.items():
            if start is None:
                self.leased_elsewhere(tp)
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

    def _start_reading(self, tp: TopicPartition, epoch: int, start: int) -> None:
        self.grants.pop(tp, None)
        self.assigned_at.pop(tp, None)
        self.pending.discard(tp)
        self.epochs[tp.partition] = epoch
        self.next_offsets[tp] = start
        self.kafka.seek(tp, start)
        self.kafka.resume(tp)

    def leased_elsewhere(self, tp: TopicPartition) -> None:
        """Another member took the lease after Kafka assigned the partition to us: our
        assignment is stale. Taking the lease back would fence the rightful owner,
        so stop reading and wait for the rebalance that takes the partition away."""
        self.epochs.pop(tp.partition, None)
        self.pending.discard(tp)
        self.assigned_at.pop(tp, None)
        self.grants.pop(tp, None)
        self.drop_lag(tp)
        if tp in self.kafka.assignment():
            self.kafka.pause(tp)
            self.blocked_since.setdefault(tp, time.monotonic())


class LeaseListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment: take the leases (bump epochs) and seek to the stored offsets."""

    def __init__(self, leases: PartitionLeases) -> None:
        self.leases = leases

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.leases.unassigned_since = time.monotonic()
        # A batch fetched before the revoke may still be handled: no further ones.
        kafka = self.leases.kafka
        kafka.pause(*(tp for tp in revoked if tp in kafka.assignment()))
        for tp in revoked:
            self.leases.forget(tp)
        if revoked:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.leases.unassigned_since = None
        if not assigned:
            return
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        # Nothing is read from a partition until its lease is ours.
        self.leases.kafka.pause(*assigned)
        self.leases.mark_assigned(assigned)
        started = time.monotonic()
        try:
            await self.leases.take_pending(in_rebalance=True)
        except (UnavailableError, KafkaError) as exc:
            log.warning("taking leases later: %s", exc)
            return
        # No heartbeat is sent while this runs: a member still here a session
        # timeout after its SyncGroup is evicted, so the time is worth seeing.
        log.info(
            "leases taken in %.2fs; still pending: %s",
            time.monotonic() - started,
            sorted(tp.partition for tp in self.leases.pending),
        )
