"""Tracing: off unless the standard OTEL_* variables ask for it, and a purchase's
trace context carried through Kafka record headers into the consumer's spans
(in-memory exporter)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from consumers.tracing import TracedRecord, trace_batch
from services.errors import SettingsError
from services.tracing import NO_TRACING, Tracing, tracing_from_env, tracing_with


@pytest.fixture
def traced() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracing_with(provider), exporter
    provider.shutdown()


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": ""},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},  # an endpoint alone: off
    ],
)
def test_tracing_is_off_by_default(environ: dict[str, str]) -> None:
    assert tracing_from_env("flashsale-test", environ) is NO_TRACING
    assert not NO_TRACING.enabled


@pytest.mark.parametrize("exporter", ["otlp", "console", "console,otlp"])
def test_an_exporter_named_turns_it_on(exporter: str) -> None:
    tracing = tracing_from_env("flashsale-test", {"OTEL_TRACES_EXPORTER": exporter})
    try:
        assert tracing.enabled
        assert tracing.provider is not None
        assert tracing.provider.resource.attributes["service.name"] == "flashsale-test"
    finally:
        tracing.shutdown()


def test_an_unknown_exporter_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="zipkin"):
        tracing_from_env("flashsale-test", {"OTEL_TRACES_EXPORTER": "zipkin"})


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def test_the_context_travels_in_record_headers_to_the_consumer_spans(
    traced: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = traced
    assert tracing.tracer is not None
    # The gateway's side: a server span, a producer span, headers for the record.
    with (
        tracing.tracer.start_as_current_span("POST /v1/purchases", kind=SpanKind.SERVER),
        tracing.tracer.start_as_current_span("purchases publish", kind=SpanKind.PRODUCER),
    ):
        headers = tracing.headers()
    assert [key for key, _ in headers] == ["traceparent"]
    # The consumer's side: a batch of that record and one sent without tracing.
    started_ns = time.time_ns()
    records = [
        TracedRecord(10, headers, "p-1", "sku-1", "confirmed", notified=True),
        TracedRecord(11, [], "p-2", "sku-1", "rejected"),
    ]
    trace_batch(tracing, "purchases", 3, 7, started_ns, records)

    spans = exporter.get_finished_spans()
    (server,) = by_name(spans, "POST /v1/purchases")
    (producer,) = by_name(spans, "purchases publish")
    (batch,) = by_name(spans, "purchases process")
    applied = {
        span.attributes["flashsale.purchase_id"]: span
        for span in spans
        if span.attributes and "flashsale.purchase_id" in span.attributes
    }
    traced_apply, untraced_apply = applied["p-1"], applied["p-2"]
    assert producer.parent is not None and producer.parent.span_id == server.context.span_id
    # The purchase's apply span continues the gateway's trace, under its producer span.
    assert traced_apply.context.trace_id == server.context.trace_id
    assert traced_apply.parent is not None
    assert traced_apply.parent.span_id == producer.context.span_id
    assert traced_apply.attributes is not None
    assert traced_apply.attributes["flashsale.status"] == "confirmed"
    assert [event.name for event in traced_apply.events] == ["notified"]
    assert [link.context.span_id for link in traced_apply.links] == [batch.context.span_id]
    # The batch links to every traced producer; an untraced record hangs under the batch.
    assert batch.kind is SpanKind.CONSUMER
    assert [link.context.span_id for link in batch.links] == [producer.context.span_id]
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 2
    assert untraced_apply.parent is not None
    assert untraced_apply.parent.span_id == batch.context.span_id
    assert untraced_apply.events == ()
    assert batch.start_time == started_ns


def test_a_clients_traceparent_is_continued(traced: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = traced
    assert tracing.tracer is not None
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = {"Traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    with tracing.tracer.start_as_current_span("server", context=tracing.context_from(incoming)):
        pass
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == trace_id
