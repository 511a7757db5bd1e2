"""Tracing across real processes: the trace context rides in the Kafka record
headers, and one purchase's trace holds the gateway's, the producer's and the
consumer's spans (console exporter: one JSON span per line of each process log)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from infra.embedded.proc import free_port, terminate_pid
from infra.processes import start_consumer, start_gateway
from services.producer import open_producer
from services.schema import PurchaseMessage
from services.settings import Settings
from services.tokens import issue_token
from services.topics import ensure_topic
from services.tracing import tracing_with
from tests.conftest import fresh_id, wait_for

CONSUMER_LOG = "tracing-consumer"
GATEWAY_INDEX = 91


async def test_a_published_record_carries_the_producer_span_in_its_headers(
    settings: Settings,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    own = settings.replace(topic=f"traced-{secrets.token_hex(3)}")
    await ensure_topic(own.kafka_bootstrap, own.topic, 1)
    message = PurchaseMessage("p-traced", "u-1", "k-1", fresh_id("trace"), 1, 0, 0)
    async with open_producer(own, tracing_with(provider)) as producer:
        partition, offset = await producer.publish(message)
    (span,) = exporter.get_finished_spans()
    assert span.name == f"{own.topic} publish"
    reader = AIOKafkaConsumer(
        own.topic, bootstrap_servers=own.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await reader.start()
    try:
        record = await reader.getone()
    finally:
        await reader.stop()
    assert (record.partition, record.offset) == (partition, offset)
    headers = dict(record.headers)
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
    assert headers["traceparent"].decode().startswith(f"00-{trace_id}-{span_id}-")
    provider.shutdown()


def spans_in(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    spans = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith('{"name"'):
            spans.append(json.loads(line))
    return spans


@pytest.fixture
def traced_stack(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A gateway and a consumer of their own, tracing to their logs."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    own = settings.replace(
        topic=f"traced-{secrets.token_hex(3)}",
        consumer_group=f"traced-{secrets.token_hex(3)}",
        gateway_port=free_port(),
    )
    logs = settings.state_dir / "logs"
    pids = [start_consumer(own, logs, CONSUMER_LOG)]
    try:
        pids.append(start_gateway(own, logs, index=GATEWAY_INDEX))
        yield own
    finally:
        for pid in pids:
            terminate_pid(pid, grace_s=10)


async def test_one_purchase_is_one_trace_from_gateway_to_consumer(traced_stack: Settings) -> None:
    own = traced_stack
    logs = own.state_dir / "logs"
    url = f"http://127.0.0.1:{own.gateway_port}"
    item_id = fresh_id("traced")
    trace_id = secrets.token_hex(16)
    headers = {
        "Authorization": f"Bearer {issue_token(own.secret, 'trace-user', 3600)}",
        "Idempotency-Key": "k-1",
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
    }
    async with aiohttp.ClientSession() as http:
        admin = {"Authorization": f"Bearer {own.admin_token}"}
        async with http.put(f"{url}/v1/items/{item_id}", json={"stock": 1}, headers=admin) as r:
            assert r.status == 201
        async with http.post(
            f"{url}/v1/purchases", json={"item_id": item_id}, headers=headers
        ) as r:
            assert r.status == 202
            purchase_id = (await r.json())["purchase_id"]

    def of_trace(log: Path) -> dict[str, dict[str, Any]]:
        return {
            span["name"]: span
            for span in spans_in(log)
            if span["context"]["trace_id"] == f"0x{trace_id}"
        }

    async def traced() -> tuple[dict[str, Any], dict[str, Any]] | None:
        gateway = of_trace(logs / f"gateway-{GATEWAY_INDEX}.log")
        consumer = of_trace(logs / f"{CONSUMER_LOG}.log")
        if "purchase apply" in consumer and len(gateway) == 2:
            return gateway, consumer
        return None

    gateway, consumer = await wait_for(traced, timeout_s=60, interval_s=0.2)
    server = gateway["POST /v1/purchases"]
    publish = gateway[f"{own.topic} publish"]
    applied = consumer["purchase apply"]
    assert server["attributes"]["flashsale.purchase_id"] == purchase_id
    assert publish["parent_id"] == server["context"]["span_id"]
    assert applied["parent_id"] == publish["context"]["span_id"]
    assert applied["attributes"]["flashsale.status"] == "confirmed"
    assert [event["name"] for event in applied["events"]] == ["notified"]
    assert "trace-user" not in json.dumps([gateway, consumer])  # no user data in spans
