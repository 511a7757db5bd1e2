"""Prometheus metrics of one gateway, in a registry of its own (no global state)."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.errors import Handler

PURCHASES_ROUTE = "/v1/purchases"
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
            "Kafka produce failures (reservation given back)",
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
        self.produce_latency = Histogram(
            "flashsale_produce_seconds",
            "Kafka produce latency",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_middleware(metrics: GatewayMetrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.requests.labels(route, request.method, str(response.status)).inc()
        if route == PURCHASES_ROUTE and request.method == "POST":
            metrics.purchase_answers[response.status] += 1
        metrics.latency.labels(route, request.method).observe(time.perf_counter() - started)
        return response

    return middleware


async def metrics_handler(request: web.Request, metrics: GatewayMetrics) -> web.Response:
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
