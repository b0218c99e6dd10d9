"""Optional OpenTelemetry tracing: a span per RPC and a child span per Redis call or pipeline.

Off by default, and then nothing from OpenTelemetry is even imported. With `[tracing] enabled = true`
and the `omnirec[tracing]` extra installed, each worker (after the fork: the batch exporter runs a thread)
builds a tracer provider, instruments redis-py (sync and asyncio clients) with the OpenTelemetry
contrib instrumentor and gets the contrib grpc.aio server interceptor, which continues a trace the caller
propagated (W3C `traceparent`). Spans go to an OTLP/HTTP collector; the SDK's standard `OTEL_*`
environment variables (endpoint, headers) apply when `endpoint` is not set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import grpc
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


class TracingConfig(BaseModel):
    """The `[tracing]` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    service_name: str = "omnirec"
    exporter: Literal["otlp", "console"] = "otlp"
    endpoint: str | None = None
    """OTLP/HTTP traces URL (e.g. http://collector:4318/v1/traces); default: the SDK's, from `OTEL_*`."""
    sample_ratio: float = Field(1.0, ge=0, le=1)
    """Share of new traces recorded; a caller's sampled flag is followed (parent-based)."""


@dataclass(frozen=True)
class Tracing:
    """What a worker holds while tracing: the server interceptor, and how to flush and undo it."""

    interceptor: grpc.aio.ServerInterceptor
    close: Callable[[], None]


def setup(config: TracingConfig, exporter: SpanExporter | None = None) -> Tracing | None:
    """Start tracing in this process; None when disabled. `exporter` overrides the configured one (tests)."""
    if not config.enabled:
        return None
    try:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ValueError(f"tracing.enabled: the OpenTelemetry SDK is not installed ({exc.name}); "
                         "pip install 'omnirec[tracing]'") from None
    if exporter is None:
        if config.exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.endpoint)
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    redis = RedisInstrumentor()
    redis.instrument(tracer_provider=provider)

    def close() -> None:
        redis.uninstrument()
        provider.shutdown()

    return Tracing(aio_server_interceptor(tracer_provider=provider), close)
