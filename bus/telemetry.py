"""structlog and OpenTelemetry set-up, once per process."""

from __future__ import annotations

import logging
import sys

import structlog
import structlog.tracebacks
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def processors(fmt: str = "console") -> list[structlog.typing.Processor]:
    """The processor chain: context variables first, JSON in production, console in
    development. Tracebacks never show frame locals: they would copy prompts, documents
    and credentials from a failing frame into the logs (structlog's JSON traceback
    transformer and its rich console formatter both show locals by default)."""
    if fmt == "json":
        exceptions: structlog.typing.Processor = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer()
    else:
        exceptions = structlog.processors.StackInfoRenderer()
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        exceptions,
        renderer,
    ]


def setup_logging(level: str = "info", fmt: str = "console") -> None:
    """Configure structlog once per process (see :func:`processors`)."""
    structlog.configure(
        processors=processors(fmt),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def setup_tracing(service_name: str, otlp_endpoint: str | None = None) -> TracerProvider | None:
    """Record spans and export them over OTLP/HTTP when an endpoint is configured.

    Without one no provider is installed: spans would go nowhere, and recording them costs
    more than the rest of a no-op request. Trace context still travels unchanged from hop
    to hop in the envelope, so a trace started at an instrumented edge continues.
    """
    if not otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    endpoint = otlp_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    return provider


def tracing_enabled() -> bool:
    """True once a real tracer provider is installed (here, or by an embedding app/test)."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def remote_parent(traceparent: str | None) -> Context | None:
    """The OpenTelemetry context of a W3C ``traceparent`` header, or None if absent/invalid.

    Parsed directly (https://www.w3.org/TR/trace-context/#traceparent-header): the generic
    propagator costs several microseconds per message.
    """
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        span_context = SpanContext(
            trace_id=int(parts[1], 16),
            span_id=int(parts[2], 16),
            is_remote=True,
            trace_flags=TraceFlags(int(parts[3][:2], 16)),
        )
    except ValueError:
        return None
    if not span_context.is_valid:
        return None
    return trace.set_span_in_context(NonRecordingSpan(span_context))
