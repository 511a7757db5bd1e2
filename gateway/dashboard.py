"""The live dashboard (api.md `GET /dashboard`): one page and the JSON it polls.

The JSON is built at most once a second per gateway, by one build at a time,
whatever the number of viewers (the page is public), from Postgres (items,
leases), the broker (end offsets, through the gateway's one long-lived client)
and this gateway's own answer counters. It holds no user data.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from gateway.metrics import GatewayMetrics
from gateway.singleflight import CachedView
from services.errors import UnavailableError
from services.resources import CoreResources
from services.store.items import recent_items
from services.store.leases import list_leases
from services.topics import EndOffsets

REFRESH_S = 1.0
# A broker that does not answer leaves the lag column empty, not every viewer waiting.
END_OFFSETS_TIMEOUT_S = 2.0
ITEMS_SHOWN = 50
RATE_STATUSES = (202, 409, 429, 503)


@dataclass
class Dashboard:
    core: CoreResources
    metrics: GatewayMetrics
    offsets: EndOffsets
    _last_counts: dict[int, int] = field(default_factory=dict)
    _last_counted_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._view = CachedView(self._build, REFRESH_S)

    async def snapshot(self) -> dict[str, Any]:
        return await self._view.get()

    async def _build(self) -> dict[str, Any]:
        now = time.monotonic()
        settings = self.core.settings
        items = await recent_items(self.core.pool, ITEMS_SHOWN)
        leases = await list_leases(self.core.pool, settings.topic, settings.partitions)
        try:
            async with asyncio.timeout(END_OFFSETS_TIMEOUT_S):
                ends = await self.offsets.of(settings.topic, [lease.partition for lease in leases])
        except (UnavailableError, TimeoutError):
            ends = {}
        return {
            "at": time.time(),
            "items": [item.as_json() for item in items],
            "rates_per_s": self._rates(now),
            "partitions": [
                {
                    "partition": lease.partition,
                    "owner": lease.owner,
                    "epoch": lease.epoch,
                    "applied_offset": lease.next_offset,
                    "end_offset": ends.get(lease.partition),
                    "lag": None
                    if lease.partition not in ends
                    else max(ends[lease.partition] - lease.next_offset, 0),
                }
                for lease in leases
            ],
        }

    def _rates(self, now: float) -> dict[str, float]:
        """Answers per second since the last snapshot, from this gateway's counters."""
        counts = {status: self.metrics.purchase_answers[status] for status in RATE_STATUSES}
        elapsed_s = max(now - self._last_counted_at, 1e-6)
        rates = {
            str(status): round((counts[status] - self._last_counts.get(status, 0)) / elapsed_s, 1)
            for status in RATE_STATUSES
        }
        rates["admissions"] = rates["202"]
        self._last_counts, self._last_counted_at = counts, now
        return rates


PAGE = (resources.files("gateway") / "static" / "dashboard.html").read_bytes()


async def dashboard_page(request: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8")
