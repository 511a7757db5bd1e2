"""The consumer's lease decisions, driven directly against the real Postgres and broker.

Each test runs one `PurchaseConsumer` on a topic of its own with a manual
assignment and calls the rebalance listener itself, where a group would: the
interleavings that a real rebalance makes rare happen here on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

import consumers.leasing as leasing_module
import consumers.logcheck as logcheck_module
import consumers.worker as worker_module
from consumers.leasing import LeaseListener
from consumers.worker import PurchaseConsumer
from loadtests.chaos.stall import partition_of
from services.errors import UnavailableError
from services.producer import PurchaseProducer, open_producer
from services.resources import CoreResources
from services.schema import PurchaseMessage
from services.settings import Settings
from services.store.batch import BatchResult, Lease
from services.store.db import Connection
from services.store.decide import Record
from services.store.items import upsert_item
from services.store.leases import LeaseGrant, LeaseRow, acquire_lease, ensure_leases, list_leases
from services.store.purchases import item_counts
from services.topics import ensure_topic
from tests.conftest import fresh_id, wait_for

if TYPE_CHECKING:
    from consumers.logcheck import RecordAt

STOCK = 100


@dataclass
class Member:
    """One consumer on its own topic, with a producer to feed it."""

    worker: PurchaseConsumer
    listener: LeaseListener
    producer: PurchaseProducer
    core: CoreResources
    topic: str

    @property
    def kafka(self) -> AIOKafkaConsumer:
        return self.worker.kafka

    def tp(self, partition: int = 0) -> TopicPartition:
        return TopicPartition(self.topic, partition)

    async def produce(self, item_id: str, numbers: range) -> None:
        for n in numbers:
            message = PurchaseMessage(f"p_{item_id}_{n}", f"u-{item_id}-{n}", "k", item_id, 1, 0, 0)
            await self.producer.publish(message)

    async def lease(self, partition: int = 0) -> LeaseRow:
        rows = await list_leases(self.core.pool, self.topic)
        return next(row for row in rows if row.partition == partition)

    async def run_until(self, check: Callable[[], Awaitable[object]]) -> None:
        """Run the poll loop until `check` holds (or fail at the deadline)."""
        stop = asyncio.Event()
        loop = asyncio.create_task(self.worker.run(stop))
        try:
            await wait_for(check, timeout_s=20)
        finally:
            stop.set()
            await loop


@contextlib.asynccontextmanager
async def member(
    settings: Settings, core: CoreResources, partitions: int = 1, assigned: tuple[int, ...] = (0,)
) -> AsyncIterator[Member]:
    topic = fresh_id("leases")
    await ensure_topic(settings.kafka_bootstrap, topic, partitions)
    await ensure_leases(core.pool, topic, partitions)
    member_settings = settings.replace(topic=topic, consumer_name=fresh_id("member"))
    kafka = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await kafka.start()
    try:
        kafka.assign([TopicPartition(topic, p) for p in assigned])
        worker = PurchaseConsumer(member_settings, core, kafka)
        async with open_producer(member_settings) as producer:
            yield Member(worker, LeaseListener(worker.leases), producer, core, topic)
    finally:
        await kafka.stop()


async def fresh_item(core: CoreResources) -> str:
    item_id = fresh_id()
    await upsert_item(core.pool, item_id, STOCK, STOCK)
    return item_id


def confirmed(core: CoreResources, item_id: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await item_counts(core.pool, item_id)).get("confirmed", (0, 0))[0] == count

    return check


ApplyBatch = Callable[[Connection, Lease, list[Record]], Awaitable[BatchResult]]


def before_first_apply(step: Callable[[], Awaitable[object]]) -> ApplyBatch:
    """apply_batch that runs `step` once, after the batch read its epoch: a rebalance
    landing while the batch is in flight."""
    real_apply = worker_module.apply_batch
    done = False

    async def apply(conn: Connection, lease: Lease, records: list[Record]) -> BatchResult:
        nonlocal done
        if not done:
            done = True
            await step()
        return await real_apply(conn, lease, records)

    return apply


async def handle_one_batch(m: Member) -> int:
    """Fetch and handle one batch; its first offset."""
    batches = await wait_for(lambda: m.kafka.getmany(timeout_ms=200), timeout_s=20)
    await m.worker.handle_all(batches)
    return int(batches[m.tp()][0].offset)


async def test_a_batch_fenced_by_our_own_newer_lease_is_applied_under_it(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 3: P moves away and back while a batch is in flight; the fenced batch
    must not drop the newer epoch, and P keeps being applied."""
    async with member(settings, core) as m:
        item_id = await fresh_item(core)
        await m.listener.on_partitions_assigned([m.tp()])
        await m.produce(item_id, range(3))

        async def regain() -> None:
            await m.listener.on_partitions_revoked([m.tp()])
            await m.listener.on_partitions_assigned([m.tp()])

        monkeypatch.setattr(worker_module, "apply_batch", before_first_apply(regain))
        await handle_one_batch(m)
        assert m.worker.stats.fenced == 1
        await m.produce(item_id, range(3, 6))
        await m.run_until(confirmed(core, item_id, 6))
        lease = await m.lease()
        assert lease.owner == m.worker.name and lease.next_offset == 6


async def test_a_batch_fenced_by_another_member_stops_reading_without_a_fight(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 3, the real zombie: another member took P; we stop reading P, rewind
    to the batch not applied, and do not take the lease back."""
    async with member(settings, core) as m:
        item_id = await fresh_item(core)
        await m.listener.on_partitions_assigned([m.tp()])
        await m.produce(item_id, range(3))

        async def taken_elsewhere() -> LeaseGrant:
            return await acquire_lease(core.pool, m.topic, 0, "the new owner")

        monkeypatch.setattr(worker_module, "apply_batch", before_first_apply(taken_elsewhere))
        first_offset = await handle_one_batch(m)
        assert m.tp() in m.kafka.paused()
        assert await m.kafka.position(m.tp()) == first_offset
        taken = await m.lease()
        await m.worker.leases.take_pending()
        assert await m.kafka.getmany(timeout_ms=300) == {}
        assert await m.lease() == taken and taken.owner == "the new owner"
        assert await item_counts(core.pool, item_id) == {}


async def test_a_stale_pending_partition_not_assigned_is_not_leased(
    settings: Settings, core: CoreResources
) -> None:
    """Finding 3, the zombie's own bump: a pending entry for a partition Kafka no
    longer assigns to us must not bump its epoch."""
    async with member(settings, core, partitions=2, assigned=(1,)) as m:
        before = await m.lease(0)
        m.worker.leases.pending.add(m.tp(0))
        await m.worker.leases.take_pending()
        assert await m.lease(0) == before
        assert m.tp(0) not in m.worker.leases.pending


async def test_a_retried_take_after_a_pause_does_not_fence_the_new_owner(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener could not take P; the member was then paused past its session
    timeout (its Kafka assignment still names P) and P's new owner took the lease.
    On waking, the poll loop's retry must not take it back."""
    async with member(settings, core) as m:
        real_acquire = leasing_module.acquire_lease

        async def postgres_down(*args: object) -> LeaseGrant:
            raise UnavailableError("postgres unavailable (test)")

        monkeypatch.setattr(leasing_module, "acquire_lease", postgres_down)
        await m.listener.on_partitions_assigned([m.tp()])
        monkeypatch.setattr(leasing_module, "acquire_lease", real_acquire)
        assert m.tp() in m.worker.leases.pending
        # The pause: the assignment is now a session timeout old.
        m.worker.leases.assigned_at[m.tp()] -= settings.session_timeout_s
        taken = await acquire_lease(core.pool, m.topic, 0, "the new owner")
        await m.worker.leases.take_pending()
        lease = await m.lease()
        assert (lease.epoch, lease.owner) == (taken.epoch, "the new owner")
        assert m.tp() in m.kafka.paused() and m.tp() not in m.worker.leases.pending


async def test_a_retried_take_without_a_pause_takes_the_lease(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule above must not strand a partition whose first take merely failed."""
    async with member(settings, core) as m:
        item_id = await fresh_item(core)
        real_acquire = leasing_module.acquire_lease

        async def postgres_down(*args: object) -> LeaseGrant:
            raise UnavailableError("postgres unavailable (test)")

        monkeypatch.setattr(leasing_module, "acquire_lease", postgres_down)
        await m.listener.on_partitions_assigned([m.tp()])
        monkeypatch.setattr(leasing_module, "acquire_lease", real_acquire)
        await m.produce(item_id, range(2))
        await m.run_until(confirmed(core, item_id, 2))
        assert (await m.lease()).owner == m.worker.name


async def test_an_unanswered_log_check_waits_instead_of_replaying(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 15: no answer from the log check is no evidence of a lost log."""
    async with member(settings, core) as m:
        item_id = await fresh_item(core)
        await m.listener.on_partitions_assigned([m.tp()])
        await m.produce(item_id, range(3))
        await m.run_until(confirmed(core, item_id, 3))
        applied = await m.lease()
        assert applied.next_offset == 3

        async def no_answer(
            bootstrap: str, wanted: dict[TopicPartition, int], timeout_s: float = 0.0
        ) -> dict[TopicPartition, RecordAt]:
            return {}

        await m.listener.on_partitions_revoked([m.tp()])
        monkeypatch.setattr(logcheck_module, "records_at", no_answer)
        await m.listener.on_partitions_assigned([m.tp()])
        retaken = await m.lease()
        assert (retaken.log_generation, retaken.next_offset) == (applied.log_generation, 3)
        assert m.tp() in m.worker.leases.pending and m.tp() in m.kafka.paused()

        monkeypatch.undo()  # the broker answers again
        await m.produce(item_id, range(3, 5))
        await m.run_until(confirmed(core, item_id, 5))
        resumed = await m.lease()
        assert (resumed.log_generation, resumed.next_offset) == (applied.log_generation, 5)
        assert resumed.epoch == retaken.epoch  # the retry checked the log, it did not bump


async def test_a_log_that_never_answers_is_read_again_from_its_start(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in chaos runs: a partition whose log check never answers stalled for good
    (and the blocking checks slowed every other partition of the member)."""
    async with member(settings, core) as m:
        item_id = await fresh_item(core)
        await m.listener.on_partitions_assigned([m.tp()])
        await m.produce(item_id, range(2))
        await m.run_until(confirmed(core, item_id, 2))
        applied = await m.lease()

        async def no_answer(
            bootstrap: str, wanted: dict[TopicPartition, int], timeout_s: float = 0.0
        ) -> dict[TopicPartition, RecordAt]:
            return {}

        await m.listener.on_partitions_revoked([m.tp()])
        monkeypatch.setattr(logcheck_module, "records_at", no_answer)
        await m.listener.on_partitions_assigned([m.tp()])
        for _ in range(logcheck_module.LOG_CHECK_ATTEMPTS - 1):
            assert m.tp() in m.worker.leases.pending
            await m.worker.leases.take_pending()
        replayed = await m.lease()
        assert replayed.log_generation == applied.log_generation + 1
        assert m.tp() not in m.worker.leases.pending
        await m.produce(item_id, range(2, 3))
        await m.run_until(confirmed(core, item_id, 3))  # the replay applies nothing twice


async def test_a_partition_the_broker_lacks_does_not_keep_the_others_from_being_leased(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chaos seed 1 (78 LATE): a restarted embedded broker made the topic again with
    fewer partitions; one offsets request for all assigned partitions then never
    answered, and the partitions that did exist were never leased either."""
    async with member(settings, core, partitions=2, assigned=(0, 1)) as m:
        real_end_offsets = m.kafka.end_offsets

        async def ghost_partition_1(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            if any(tp.partition == 1 for tp in tps):
                await asyncio.sleep(3600)  # never answers, as for a partition it lacks
            return await real_end_offsets(tps)

        monkeypatch.setattr(m.kafka, "end_offsets", ghost_partition_1)
        await m.listener.on_partitions_assigned([m.tp(0), m.tp(1)])
        assert m.tp(0) not in m.worker.leases.pending and m.tp(1) in m.worker.leases.pending
        item_id = next(i for i in (fresh_id() for _ in range(100)) if partition_of(i, 2) == 0)
        await upsert_item(core.pool, item_id, STOCK, STOCK)
        await m.produce(item_id, range(2))
        await m.run_until(confirmed(core, item_id, 2))
