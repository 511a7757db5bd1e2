"""OpenTelemetry tracing of a purchase: gateway, Kafka (context in the record headers),
the consumer's batch and the result notify.

Off by default. On when the standard OTEL_TRACES_EXPORTER names an exporter
(`otlp`, `console`; `none` or unset is off, and OTEL_SDK_DISABLED=true wins);
the other standard variables then configure it as the SDK reads them
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER, OTEL_BSP_*). The OTLP exporter speaks http/protobuf.

Each process builds one Tracing at its edge (like Settings) and passes it down;
no global tracer provider is installed. Off, a process holds NO_TRACING, the
OpenTelemetry packages are not even imported, and the hot path pays one
attribute check (`tracing.enabled`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.errors import SettingsError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

EXPORTERS = ("otlp", "console")
TRACER_NAME = "flashsale"
KafkaHeaders = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Tracing:
    tracer: Tracer | None = None
    provider: TracerProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def headers(self) -> list[tuple[str, bytes]]:
        """The current trace context as Kafka record headers (W3C traceparent)."""
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
            TraceContextTextMapPropagator,
        )

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        return [(key, value.encode()) for key, value in carrier.items()]

    def context_from(self, headers: KafkaHeaders | Mapping[str, str] | None) -> Context:
        """The trace context a producer put in a record's headers (or an HTTP request's)."""
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
            TraceContextTextMapPropagator,
        )

        carrier: dict[str, str]
        if headers is None:
            carrier = {}
        elif isinstance(headers, Mapping):
            carrier = {key.lower(): str(value) for key, value in headers.items()}
        else:
            carrier = {key: value.decode("latin-1") for key, value in headers}
        return TraceContextTextMapPropagator().extract(carrier)

    def shutdown(self) -> None:
        """Export what is buffered; call once when the process stops."""
        if self.provider is not None:
            self.provider.shutdown()


NO_TRACING = Tracing()


def wanted_exporters(environ: Mapping[str, str]) -> list[str]:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [name for name in names if name and name != "none"]
    unknown = sorted(set(names) - set(EXPORTERS))
    if unknown:
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER: unknown exporter(s) {', '.join(unknown)} "
            f"(flashsale ships {', '.join(EXPORTERS)}, or none)"
        )
    return names


def tracing_from_env(service_name: str, environ: Mapping[str, str] | None = None) -> Tracing:
    """NO_TRACING unless OTEL_TRACES_EXPORTER names an exporter."""
    env = os.environ if environ is None else environ
    names = wanted_exporters(env)
    if not names:
        return NO_TRACING
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    provider = TracerProvider(resource=_resource(service_name, env))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return tracing_with(provider)


def tracing_with(provider: TracerProvider) -> Tracing:
    """Tracing through a given provider (the tests' in-memory exporter)."""
    return Tracing(provider.get_tracer(TRACER_NAME), provider)


def _resource(service_name: str, env: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    # OTEL_SERVICE_NAME, when set, names the service; else the process kind does.
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    return Resource.create(attributes)


def _exporter(name: str) -> Any:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

    # One span per line of stdout (the process log), easy to grep and parse.
    return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")


def span_links(tracing: Tracing, contexts: Iterable[Context]) -> list[Any]:
    """Links to the valid span contexts among `contexts` (a batch's producers)."""
    from opentelemetry import trace  # noqa: PLC0415

    links = []
    for context in contexts:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            links.append(trace.Link(span_context))
    return links
