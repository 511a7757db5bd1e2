"""What one gateway holds while it runs, under a typed AppKey."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.admission import Admission
from gateway.clientaddr import ClientAddresses
from gateway.dashboard import Dashboard
from gateway.errors import ApiError
from gateway.hints import ItemHints
from gateway.lookups import PurchaseFinder
from gateway.metrics import GatewayMetrics
from gateway.publicreads import PublicReads
from gateway.ratelimit import RateLimits
from gateway.singleflight import SingleFlight
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
    addresses: ClientAddresses
    public_reads: PublicReads
    tracing: Tracing = NO_TRACING

    def __post_init__(self) -> None:
        # /readyz is public: one run of its checks (a round trip to each service)
        # at a time, shared by every probe that arrives meanwhile. Not cached past
        # that: an answer is never older than the run the request found, so a
        # service that just died is reported by the next run.
        self._readiness: SingleFlight[None, dict[str, bool]] = SingleFlight()

    async def limit_address(self, request: web.Request, kind: str) -> None:
        """429 past the per-address limit `kind` (gateway/ratelimit.py), counted."""
        try:
            await self.limits.check(kind, self.addresses.of(request))
        except ApiError:
            self.metrics.rate_limited.labels(kind).inc()
            raise

    async def readiness(self) -> dict[str, bool]:
        return await self._readiness.run(None, self._check_all)

    async def _check_all(self) -> dict[str, bool]:
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
