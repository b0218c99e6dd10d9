"""OpenTelemetry: a request's server span with its Redis pipeline as a child; nothing loaded when off."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from service_harness import API_KEYS, RunningServer, materialize

from omnirec import tracing
from omnirec.config import OmnirecConfig
from omnirec.domain.readers import RetailData
from omnirec.v1 import common_pb2
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc


def test_request_span_has_its_redis_calls_as_children(config: OmnirecConfig, retail: RetailData, known_member: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    configured = tracing.setup
    monkeypatch.setattr(tracing, "setup", lambda cfg: configured(cfg, exporter))
    config = config.model_copy(update={"tracing": tracing.TracingConfig(enabled=True)})
    materialize(retail, config)
    server = RunningServer(config, retail)
    try:
        reply = rec_grpc.RecommendationServiceStub(server.channel).Recommend(  # reads the purchases from Redis
            rec.RecommendRequest(member_id=known_member, channel=common_pb2.CHANNEL_APP, k=5, exclude_purchased=True),
            metadata=(("x-api-key", API_KEYS["app"]),), timeout=5)
        assert len(reply.items.item_ids) == 5 and not reply.info.degraded
    finally:
        server.stop()  # flushes the exporter
    spans = exporter.get_finished_spans()
    request = next(s for s in spans if s.kind is SpanKind.SERVER and s.name.endswith("RecommendationService/Recommend"))
    redis_calls = [s for s in spans if s.attributes.get("db.system") == "redis"
                   and s.context.trace_id == request.context.trace_id]
    assert redis_calls and all(s.parent is not None for s in redis_calls)
    assert request.context.span_id in {s.parent.span_id for s in redis_calls}  # type: ignore[union-attr]


def test_tracing_off_loads_no_tracer_and_instruments_nothing() -> None:
    # (redis-py itself imports OpenTelemetry's metrics API when it is installed; that is not tracing.)
    code = ("import sys; from omnirec import tracing; import omnirec.service.server; "
            "assert tracing.setup(tracing.TracingConfig()) is None; "
            "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', "
            "'opentelemetry.instrumentation'))]; assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)
