"""Prometheus metrics of one consumer process, and the small server that exports them.

A registry of its own (no global state). The server is a bare asyncio one:
consumers never import the HTTP framework (pyproject's import contracts), and a
scrape is one GET answered with the text format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

APPLY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
# A scrape request is a few hundred bytes; anything bigger is not Prometheus.
MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_S = 5.0


@dataclass
class ConsumerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.batch_records = Histogram(
            "flashsale_consumer_batch_records",
            "records per partition batch applied in one Postgres transaction",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.apply_latency = Histogram(
            "flashsale_consumer_apply_seconds",
            "time to apply one partition batch (the Postgres transaction)",
            buckets=APPLY_BUCKETS_S,
            registry=r,
        )
        self.purchases = Counter(
            "flashsale_consumer_purchases",
            "purchases decided by this consumer, by outcome",
            ["outcome"],
            registry=r,
        )
        self.fenced = Counter(
            "flashsale_consumer_fenced_batches",
            "batches refused because another member holds the partition's lease",
            registry=r,
        )
        self.lag = Gauge(
            "flashsale_consumer_lag",
            "records behind the partition's high watermark, per partition this consumer reads",
            ["partition"],
            registry=r,
        )
        self.repairs = Counter(
            "flashsale_reconciler_repairs",
            "reconciler repairs, by kind (settled, republished, rebuilt)",
            ["kind"],
            registry=r,
        )
        self.reconciler_failures = Counter(
            "flashsale_reconciler_failures",
            "reconciler passes that failed and were retried",
            registry=r,
        )
        # Present from the start, so a dashboard shows zero rather than no data.
        for outcome in ("confirmed", "rejected", "cancelled", "paid", "expired"):
            self.purchases.labels(outcome)
        for kind in ("settled", "republished", "rebuilt"):
            self.repairs.labels(kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def _answer(
    metrics: ConsumerMetrics, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        writer.close()
        return
    request_line = head.split(b"\r\n", 1)[0].split()
    if len(request_line) >= 2 and request_line[0] == b"GET" and request_line[1] == b"/metrics":
        status, content_type, body = "200 OK", CONTENT_TYPE_LATEST, metrics.render()
    else:
        status, content_type, body = "404 Not Found", "text/plain", b"not found\n"
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def metrics_server(
    metrics: ConsumerMetrics, host: str, port: int
) -> AsyncIterator[asyncio.Server | None]:
    """Serve GET /metrics on host:port; port 0 means no server (the default)."""
    if port == 0:
        yield None
        return

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer(metrics, reader, writer)

    server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_BYTES)
    log.info("consumer metrics on http://%s:%d/metrics", host, port)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()
