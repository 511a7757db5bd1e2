"""The reconciler's loop inside a consumer process: a pass every interval,
backing off while a backing service is down, its repairs counted in the
consumer's metrics (services/reconciler.py does the work of a pass)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from consumers.metrics import ConsumerMetrics
from consumers.settle import ConsumerStats
from services.applygate import ApplyGate
from services.errors import FlashsaleError, UnavailableError
from services.producer import PurchaseProducer, open_producer
from services.reconciler import Reconciler, ReconcileReport
from services.resources import CoreResources
from services.schema import PurchaseMessage
from services.settings import Settings

log = logging.getLogger(__name__)


# Errors of the world, not of our code: the reconciler retries them for ever.
RECONCILE_RETRIED: tuple[type[BaseException], ...] = (
    FlashsaleError,
    KafkaError,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    RedisError,
)
RECONCILE_BACKOFF_MAX_S = 30.0


class _ProducerSlot:
    """The reconciler keeps its memory across producers reopened after a failure."""

    def __init__(self) -> None:
        self.producer: PurchaseProducer | None = None

    async def publish(self, message: PurchaseMessage) -> tuple[int, int]:
        if self.producer is None:
            raise UnavailableError("the reconciler has no producer open")
        return await self.producer.publish(message)


async def reconcile_forever(
    settings: Settings,
    core: CoreResources,
    stop: asyncio.Event,
    stats: ConsumerStats,
    owns: Callable[[str], bool] | None = None,
    metrics: ConsumerMetrics | None = None,
    gate: ApplyGate | None = None,
) -> None:
    """Run reconciler passes until stopped, surviving every failure but a bug.

    A consumer without its reconciler would still run but leave reservations
    unpublished and filters unrepaired, silently: so any failure is counted,
    logged and retried with a backoff (the producer reopened); a bug (TypeError,
    say) propagates, and `serve` stops the process with it (exit non-zero).
    """
    metrics = metrics if metrics is not None else ConsumerMetrics()
    slot = _ProducerSlot()
    reconciler = Reconciler(core, slot.publish, settings.reservation_stale_s, owns=owns, gate=gate)
    backoff_s = settings.reconcile_interval_s
    while not stop.is_set():
        passes_before = stats.reconciler_passes
        try:
            async with open_producer(settings) as producer:
                slot.producer = producer
                await _reconcile_passes(reconciler, settings, stop, stats, metrics)
        except RECONCILE_RETRIED as exc:
            stats.reconciler_failures += 1
            metrics.reconciler_failures.inc()
            if stats.reconciler_passes > passes_before:
                backoff_s = settings.reconcile_interval_s  # a new run of failures
            log.warning(
                "reconciler failed (%d failures so far), retrying in %.1fs: %r",
                stats.reconciler_failures,
                backoff_s,
                exc,
            )
            await pause_unless_stopped(stop, backoff_s)
            backoff_s = min(backoff_s * 2, RECONCILE_BACKOFF_MAX_S)
        finally:
            slot.producer = None


async def _reconcile_passes(
    reconciler: Reconciler,
    settings: Settings,
    stop: asyncio.Event,
    stats: ConsumerStats,
    metrics: ConsumerMetrics,
) -> None:
    """Passes until stopped; the first failure ends them (the caller reopens and retries)."""
    while not stop.is_set():
        report = await reconciler.run_once()
        stats.reconciler_passes += 1
        count_repairs(metrics, report)
        if report:
            log.info("reconciled: %s", report.summary())
            if report.rebuilt:
                log.debug("rebuilt filters: %s", report.rebuilt_ids())
        await pause_unless_stopped(stop, settings.reconcile_interval_s)


def count_repairs(metrics: ConsumerMetrics, report: ReconcileReport) -> None:
    metrics.repairs.labels("settled").inc(report.settled)
    metrics.repairs.labels("republished").inc(report.republished)
    metrics.repairs.labels("rebuilt").inc(len(report.rebuilt))


async def pause_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
