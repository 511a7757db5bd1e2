"""What one gateway holds while it runs, under a typed AppKey."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.admission import Admission
from gateway.dashboard import Dashboard
from gateway.hints import ItemHints
from gateway.lookups import PurchaseFinder
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimits
from services.producer import PurchaseProducer
from services.resources import CoreResources
from services.settings import Settings
from services.store.db import ping
from services.store.notifications import ResultWaiters
from services.tracing import NO_TRACING, Tracing

READY_CHECK_TIMEOUT_S = 2.0


@dataclass
class Gateway:
    settings: Settings
    core: CoreResources
    producer: PurchaseProducer
    limits: RateLimits
    hints: ItemHints
    metrics: GatewayMetrics
    waiters: ResultWaiters
    admission: Admission
    dashboard: Dashboard
    finder: PurchaseFinder
    tracing: Tracing = NO_TRACING

    async def readiness(self) -> dict[str, bool]:
        names = ("postgres", "redis", "kafka")
        results = await asyncio.gather(
            self._check(self._postgres()), self._check(self._redis()), self._check(self._kafka())
        )
        return dict(zip(names, results, strict=True))

    @staticmethod
    async def _check(probe: Coroutine[Any, Any, None]) -> bool:
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
                await probe
        except Exception:
            return False
        return True

    async def _postgres(self) -> None:
        await ping(self.core.pool)

    async def _redis(self) -> None:
        await self.core.redis.ping()

    async def _kafka(self) -> None:
        await self.producer.broker_answers()


GATEWAY = web.AppKey("gateway", Gateway)
