"""Entry point of one consumer process: `python -m consumers`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import asyncpg
from aiokafka import AIOKafkaConsumer

from consumers.leasing import LeaseListener, RejoinStuckError
from consumers.metrics import ConsumerMetrics, metrics_server
from consumers.reconcileloop import pause_unless_stopped, reconcile_forever
from consumers.relay import RELAY_BATCH, RELAY_IDLE_S, EventRelay, open_event_producer
from consumers.worker import PurchaseConsumer, consumer_name
from services.errors import UnavailableError
from services.logs import setup_logging
from services.producer import METADATA_MAX_AGE_MS
from services.resources import CoreResources, open_core
from services.settings import Settings
from services.store.leases import ensure_leases
from services.topics import ensure_topic
from services.tracing import NO_TRACING, Tracing, tracing_from_env

log = logging.getLogger("flashsale.consumer")

STARTUP_RETRY_S = 0.5
KAFKA_STOP_TIMEOUT_S = 10.0
# A consumer paused (SIGSTOP, GC) inside a batch transaction would hold its lease
# row lock forever and block the partition's next owner: Postgres ends such a
# session after this long, and the zombie's commit then fails.
CONSUMER_SESSION_SETTINGS = {"idle_in_transaction_session_timeout": "5000"}
STARTUP_DEADLINE_S = 60.0


def build_kafka_consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        client_id=consumer_name(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
        max_poll_interval_ms=max(int(settings.session_timeout_s * 1000) * 3, 30_000),
        max_partition_fetch_bytes=1 << 20,
        # aiokafka's default is 5 minutes: after a restarted embedded broker made
        # the topic again with fewer partitions, the group kept assigning the
        # missing ones (chaos seed 1: 78 LATE). A refresh that sees the change
        # makes the group rebalance over the partitions that exist.
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
    )


async def prepare(settings: Settings, core: CoreResources) -> None:
    """Topic and lease rows exist before we join the group (retried while services start)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_DEADLINE_S
    while True:
        try:
            await ensure_topic(settings.kafka_bootstrap, settings.topic, settings.partitions)
            await ensure_topic(settings.kafka_bootstrap, settings.events_topic, settings.partitions)
            await ensure_leases(core.pool, settings.topic, settings.partitions)
            return
        except UnavailableError as exc:
            if loop.time() > deadline:
                raise
            log.warning("waiting for services: %s", exc)
            await asyncio.sleep(STARTUP_RETRY_S)


RELAY_BACKOFF_MAX_S = 5.0


async def relay_forever(
    settings: Settings,
    core: CoreResources,
    stop: asyncio.Event,
    owned: Callable[[], dict[int, int]],
) -> None:
    """Relay the outbox of the partitions this process holds until stopped.

    Failures of the world (broker or Postgres away) are retried with a backoff,
    the producer reopened when it cannot start; a bug propagates and `serve`
    stops the process, as for the reconciler.
    """
    backoff_s = RELAY_IDLE_S
    while not stop.is_set():
        try:
            async with open_event_producer(settings) as producer:
                relay = EventRelay(settings, core, producer, owned)
                while not stop.is_set():
                    try:
                        sent = await relay.run_once()
                        if sent < RELAY_BATCH:
                            await relay.prune_if_due()
                    except UnavailableError as exc:
                        log.warning("event relay backing off %.1fs: %s", backoff_s, exc)
                        await pause_unless_stopped(stop, backoff_s)
                        backoff_s = min(backoff_s * 2, RELAY_BACKOFF_MAX_S)
                        continue
                    backoff_s = RELAY_IDLE_S
                    if sent < RELAY_BATCH:
                        await pause_unless_stopped(stop, RELAY_IDLE_S)
        except UnavailableError as exc:
            log.warning("event relay cannot start, retrying in %.1fs: %s", backoff_s, exc)
            await pause_unless_stopped(stop, backoff_s)
            backoff_s = min(backoff_s * 2, RELAY_BACKOFF_MAX_S)


async def serve(settings: Settings, tracing: Tracing = NO_TRACING) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = ConsumerMetrics()
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            metrics_server(metrics, settings.consumer_metrics_host, settings.consumer_metrics_port)
        )
        core = await open_core_when_reachable(stack, settings, stop)
        if core is None:
            return  # stopped before Postgres and Redis could be reached
        await prepare(settings, core)
        worker = PurchaseConsumer(settings, core, build_kafka_consumer(settings), metrics, tracing)
        reconciler = asyncio.create_task(
            reconcile_forever(
                settings, core, stop, worker.stats, worker.owns_item, metrics, worker.gate
            )
        )
        # A reconciler that died of a bug stops the consumer: `await reconciler`
        # below raises it, and the process exits non-zero instead of running on
        # without anyone republishing lost purchases.
        reconciler.add_done_callback(lambda _: stop.set())
        relay = asyncio.create_task(
            relay_forever(settings, core, stop, lambda: dict(worker.leases.epochs))
        )
        relay.add_done_callback(lambda _: stop.set())
        try:
            while not stop.is_set():
                await consume_until_stuck(settings, worker, stop)
        finally:
            stop.set()
            log.info("consumer %s stopping: %s", worker.name, worker.stats)
            await reconciler
            await relay


async def open_core_when_reachable(
    stack: contextlib.AsyncExitStack, settings: Settings, stop: asyncio.Event
) -> CoreResources | None:
    """The core resources, once Postgres answers: a consumer started while Postgres
    is down or out of reach (a restart, a partition) waits for it rather than
    exiting, since no one restarts it (chaos seed 12: a consumer restarted into a
    partition from Postgres exited, and the partitions had no consumer left).
    None when stopped first."""
    backoff_s = STARTUP_RETRY_S
    while not stop.is_set():
        try:
            return await stack.enter_async_context(
                open_core(settings, run_migrations=True, server_settings=CONSUMER_SESSION_SETTINGS)
            )
        except (UnavailableError, asyncpg.InvalidCatalogNameError) as exc:
            # A server that answers before its database exists (it is being
            # created: the embedded one, a Postgres container's first start).
            log.warning("waiting %.1fs for Postgres: %s", backoff_s, exc)
            await pause_unless_stopped(stop, backoff_s)
            backoff_s = min(backoff_s * 2, RELAY_BACKOFF_MAX_S)
    return None


async def consume_until_stuck(
    settings: Settings, worker: PurchaseConsumer, stop: asyncio.Event
) -> None:
    """One group membership: join, consume until stopped or stuck in a rejoin, leave."""
    kafka = worker.kafka
    kafka.subscribe([settings.topic], listener=LeaseListener(worker.leases))
    await kafka.start()
    log.info("consumer %s joined group %s", worker.name, settings.consumer_group)
    try:
        await worker.run(stop)
    except RejoinStuckError as exc:
        log.warning("%s; leaving the group and joining again", exc)
        worker.reset(build_kafka_consumer(settings))
    finally:
        try:
            await asyncio.wait_for(kafka.stop(), timeout=KAFKA_STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("the old Kafka consumer did not stop within %ss", KAFKA_STOP_TIMEOUT_S)


def main() -> None:
    settings = Settings.from_env()
    tracing = tracing_from_env("flashsale-consumer")
    setup_logging(settings.log_level)
    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(serve(settings, tracing))
    except KeyboardInterrupt:
        pass
    finally:
        tracing.shutdown()
