"""The consumer's spans: one per partition batch, one per purchase in it.

A batch holds purchases of many traces, so the batch span links to every
record's producer span, and each purchase gets a span of its own whose parent is
its producer span (from the record's headers): a purchase's trace reads
gateway -> publish -> apply, and the apply span carries a `notified` event for
the Postgres NOTIFY its batch committed (what wakes a `GET ?wait=`). Built after
the batch committed, from its start time: nothing of this runs when tracing is
off (the worker checks `tracing.enabled` once per batch).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.tracing import KafkaHeaders, Tracing, span_links

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, SpanContext


@dataclass(frozen=True, slots=True)
class TracedRecord:
    offset: int
    headers: KafkaHeaders
    purchase_id: str | None = None
    item_id: str | None = None
    status: str | None = None  # None: not decided in this batch (undecodable)
    duplicate: bool = False
    notified: bool = False


def trace_batch(
    tracing: Tracing,
    topic: str,
    partition: int,
    epoch: int,
    started_ns: int,
    records: Sequence[TracedRecord],
) -> None:
    from opentelemetry.trace import SpanKind, set_span_in_context  # noqa: PLC0415

    tracer = tracing.tracer
    assert tracer is not None
    ended_ns = time.time_ns()
    contexts = [tracing.context_from(record.headers) for record in records]
    batch = tracer.start_span(
        f"{topic} process",
        kind=SpanKind.CONSUMER,
        start_time=started_ns,
        links=span_links(tracing, contexts),
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.operation.type": "process",
            "messaging.batch.message_count": len(records),
            "flashsale.lease_epoch": epoch,
        },
    )
    batch_context = batch.get_span_context()
    for record, context in zip(records, contexts, strict=True):
        attributes: dict[str, str | int | bool] = {
            "messaging.kafka.offset": record.offset,
            "flashsale.duplicate": record.duplicate,
        }
        if record.purchase_id is not None:
            attributes["flashsale.purchase_id"] = record.purchase_id
        if record.item_id is not None:
            attributes["flashsale.item_id"] = record.item_id
        if record.status is not None:
            attributes["flashsale.status"] = record.status
        # Parent: the record's producer span; a record sent untraced starts
        # under the batch span instead.
        parent = context if _valid(context) else set_span_in_context(batch)
        span = tracer.start_span(
            "purchase apply",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=started_ns,
            attributes=attributes,
            links=_link_to(batch_context),
        )
        if record.notified:
            span.add_event("notified", timestamp=ended_ns)
        span.end(end_time=ended_ns)
    batch.end(end_time=ended_ns)


def _valid(context: Context) -> bool:
    from opentelemetry import trace  # noqa: PLC0415

    return trace.get_current_span(context).get_span_context().is_valid


def _link_to(span_context: SpanContext) -> list[Link]:
    from opentelemetry.trace import Link  # noqa: PLC0415

    return [Link(span_context)]
