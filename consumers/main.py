"""Entry point of one consumer process: `python -m consumers`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiokafka import AIOKafkaConsumer

from consumers.worker import LeaseListener, PurchaseConsumer, RejoinStuckError, consumer_name
from services.errors import UnavailableError
from services.logs import setup_logging
from services.producer import open_producer
from services.reconciler import Reconciler
from services.resources import CoreResources, open_core
from services.settings import Settings
from services.store.leases import ensure_leases
from services.topics import ensure_topic

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
    )


async def prepare(settings: Settings, core: CoreResources) -> None:
    """Topic and lease rows exist before we join the group (retried while services start)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_DEADLINE_S
    while True:
        try:
            await ensure_topic(settings.kafka_bootstrap, settings.topic, settings.partitions)
            await ensure_leases(core.pool, settings.topic, settings.partitions)
            return
        except UnavailableError as exc:
            if loop.time() > deadline:
                raise
            log.warning("waiting for services: %s", exc)
            await asyncio.sleep(STARTUP_RETRY_S)


async def reconcile_forever(settings: Settings, core: CoreResources, stop: asyncio.Event) -> None:
    async with open_producer(settings) as producer:
        reconciler = Reconciler(core, producer.publish, settings.reservation_stale_s)
        while not stop.is_set():
            try:
                report = await reconciler.run_once()
                if report:
                    log.info("reconciled: %s", report)
            except UnavailableError as exc:
                log.warning("reconciler: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.reconcile_interval_s)


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_core(
        settings, run_migrations=True, server_settings=CONSUMER_SESSION_SETTINGS
    ) as core:
        await prepare(settings, core)
        worker = PurchaseConsumer(settings, core, build_kafka_consumer(settings))
        reconciler = asyncio.create_task(reconcile_forever(settings, core, stop))
        try:
            while not stop.is_set():
                await consume_until_stuck(settings, worker, stop)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, UnavailableError):
                await reconciler
            log.info("consumer %s stopped: %s", worker.name, worker.stats)


async def consume_until_stuck(
    settings: Settings, worker: PurchaseConsumer, stop: asyncio.Event
) -> None:
    """One group membership: join, consume until stopped or stuck in a rejoin, leave."""
    kafka = worker.kafka
    kafka.subscribe([settings.topic], listener=LeaseListener(worker))
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
    setup_logging(settings.log_level)
    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(serve(settings))
    except KeyboardInterrupt:
        pass
