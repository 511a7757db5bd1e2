"""Prometheus metrics of one gateway, in a registry of its own (no global state)."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.errors import Handler

PURCHASES_ROUTE = "/v1/purchases"
# The limits of gateway/ratelimit.py (its USER, CLIENT, ITEM, LOOKUP, VIEW).
RATE_LIMIT_KINDS = ("user", "client", "item", "lookup", "view")
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # Answers to POST /v1/purchases by status, for the live dashboard's rates.
    purchase_answers: collections.Counter[int] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "flashsale_http_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "flashsale_http_request_seconds",
            "HTTP latency by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.admitted = Counter("flashsale_admitted", "purchases admitted (202)", registry=r)
        self.replayed = Counter(
            "flashsale_idempotent_replays",
            "requests answered from an earlier admission",
            registry=r,
        )
        self.sold_out = Counter(
            "flashsale_sold_out", "sold-out answers (409)", ["cached"], registry=r
        )
        self.rate_limited = Counter(
            "flashsale_rate_limited", "rate-limited answers (429)", ["limit"], registry=r
        )
        self.produce_errors = Counter(
            "flashsale_produce_errors",
            "Kafka produce failures (what became of each: flashsale_failed_produces)",
            registry=r,
        )
        self.failed_produces = Counter(
            "flashsale_failed_produces",
            "failed produces by outcome (gateway/producefault.py)",
            ["outcome"],
            registry=r,
        )
        self.giveback_errors = Counter(
            "flashsale_giveback_errors",
            "reservations a failed produce could not give back (the reconciler settles them)",
            registry=r,
        )
        self.recovered = Counter(
            "flashsale_recovered_from_store",
            "retries answered from Postgres after Redis forgot their key",
            registry=r,
        )
        self.publish_mark_errors = Counter(
            "flashsale_publish_mark_errors",
            "admissions answered 202 although Redis failed after the produce",
            registry=r,
        )
        self.published_rewritten = Counter(
            "flashsale_published_records_rewritten",
            "admissions whose idempotency record Redis lost mid-admission, written again",
            registry=r,
        )
        self.uncertain = Counter(
            "flashsale_uncertain_answers",
            "503s for a purchase found in neither Redis nor Postgres while Redis' fence"
            " is not passed (it may have been accepted)",
            ["route"],
            registry=r,
        )
        self.fences_produced = Counter(
            "flashsale_redis_fences_produced",
            "fence messages produced to a partition after Redis lost data",
            registry=r,
        )
        self.produce_latency = Histogram(
            "flashsale_produce_seconds",
            "Kafka produce latency",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

        # Sale state from the dashboard snapshot (Postgres and the broker, at most once
        # a second), set at scrape time: the same numbers on every gateway, so the
        # Grafana panels take max() across gateways.
        self.item_stock = Gauge(
            "flashsale_item_stock", "units on sale, per recent item", ["item_id"], registry=r
        )
        self.item_sold = Gauge(
            "flashsale_item_sold", "units sold, per recent item", ["item_id"], registry=r
        )
        self.item_remaining = Gauge(
            "flashsale_item_remaining", "units left, per recent item", ["item_id"], registry=r
        )
        self.partition_lag = Gauge(
            "flashsale_partition_lag",
            "records in the partition not yet applied to Postgres (end offset - applied)",
            ["partition"],
            registry=r,
        )

        # Present from the start, so a dashboard shows zero rather than no data;
        # kept, as `.labels()` costs a key build on every sold-out answer.
        self.sold_out_cached = self.sold_out.labels("true")
        self.sold_out_found = self.sold_out.labels("false")
        for limit in RATE_LIMIT_KINDS:
            self.rate_limited.labels(limit)

    def watch_pool(self, exhausted: Callable[[], int]) -> None:
        """Count the Postgres pool's acquires that found no free connection."""
        self.registry.register(PoolExhaustion(exhausted))

    def observe_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        """Copy a dashboard snapshot into the sale-state gauges (old labels dropped)."""
        for gauge in (self.item_stock, self.item_sold, self.item_remaining, self.partition_lag):
            gauge.clear()
        for item in snapshot.get("items", []):
            item_id = str(item["item_id"])
            self.item_stock.labels(item_id).set(item["stock"])
            self.item_sold.labels(item_id).set(item["sold"])
            self.item_remaining.labels(item_id).set(item["remaining"])
        for row in snapshot.get("partitions", []):
            if row.get("lag") is not None:
                self.partition_lag.labels(str(row["partition"])).set(row["lag"])

    def render(self) -> bytes:
        return generate_latest(self.registry)


class PoolExhaustion(Collector):
    """Read at scrape time from the pool (services/store/db.py DeadlinePool)."""

    def __init__(self, exhausted: Callable[[], int]) -> None:
        self.exhausted = exhausted

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "flashsale_db_pool_exhausted",
            "Postgres acquires that found every connection of the pool in use and waited",
            value=self.exhausted(),
        )


def metrics_middleware(metrics: GatewayMetrics) -> Middleware:
    # The labelled children, looked up once: `.labels()` builds and validates its
    # key on every call. Routes, methods and statuses are few (unknown paths all
    # count as "unmatched"), so these stay small.
    counted: dict[tuple[str, str, int], Any] = {}
    timed: dict[tuple[str, str], Any] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method, status = request.method, response.status
        counter = counted.get((route, method, status))
        if counter is None:
            counter = counted[(route, method, status)] = metrics.requests.labels(
                route, method, str(status)
            )
        counter.inc()
        if route == PURCHASES_ROUTE and method == "POST":
            metrics.purchase_answers[status] += 1
        latency = timed.get((route, method))
        if latency is None:
            latency = timed[(route, method)] = metrics.latency.labels(route, method)
        latency.observe(time.perf_counter() - started)
        return response

    return middleware


async def metrics_handler(request: web.Request, metrics: GatewayMetrics) -> web.Response:
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
