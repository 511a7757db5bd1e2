"""Finding 8: the consumer's reconciler loop survives every failure but a bug."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import asyncpg
import pytest

import consumers.reconcileloop as reconcile_loop
from consumers.reconcileloop import reconcile_forever
from consumers.settle import ConsumerStats
from infra.embedded.proc import free_port
from services.producer import PurchaseProducer
from services.reconciler import Reconciler, ReconcileReport
from services.resources import CoreResources
from services.settings import Settings
from tests.conftest import wait_for

OpenProducer = Callable[[Settings], AbstractAsyncContextManager[PurchaseProducer]]


def counted(stats: ConsumerStats, passes: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return stats.reconciler_passes >= passes

    return check


@contextlib.asynccontextmanager
async def running(
    settings: Settings, core: CoreResources, stats: ConsumerStats
) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(reconcile_forever(settings, core, stop, stats))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def test_a_broker_refusing_at_start_delays_the_reconciler_only(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open: OpenProducer = reconcile_loop.open_producer
    refusing = f"127.0.0.1:{free_port()}"
    opened = 0

    def open_refused_twice(s: Settings) -> AbstractAsyncContextManager[PurchaseProducer]:
        nonlocal opened
        opened += 1
        return real_open(s.replace(kafka_bootstrap=refusing) if opened <= 2 else s)

    monkeypatch.setattr(reconcile_loop, "open_producer", open_refused_twice)
    stats = ConsumerStats()
    quick = settings.replace(reconcile_interval_s=0.1)
    async with running(quick, core, stats) as task:
        await wait_for(counted(stats, 1), timeout_s=30)
        assert stats.reconciler_failures == 2 and not task.done()


async def test_a_failed_pass_is_counted_and_retried(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pass = Reconciler.run_once
    failed = False

    async def too_many_connections_once(self: Reconciler) -> ReconcileReport:
        nonlocal failed
        if not failed:
            failed = True
            raise asyncpg.TooManyConnectionsError("sorry, too many clients already")
        return await real_pass(self)

    monkeypatch.setattr(Reconciler, "run_once", too_many_connections_once)
    stats = ConsumerStats()
    quick = settings.replace(reconcile_interval_s=0.1)
    async with running(quick, core, stats) as task:
        await wait_for(counted(stats, 1), timeout_s=30)
        assert stats.reconciler_failures == 1 and not task.done()


async def test_a_bug_in_a_pass_ends_the_loop_loudly(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def bug(self: Reconciler) -> ReconcileReport:
        raise TypeError("a bug")

    monkeypatch.setattr(Reconciler, "run_once", bug)
    task = asyncio.create_task(reconcile_forever(settings, core, asyncio.Event(), ConsumerStats()))
    with pytest.raises(TypeError):
        await asyncio.wait_for(task, timeout=30)
