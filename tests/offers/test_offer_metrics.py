"""Offer metrics through a real server: coupon outcomes by reason (replays once), degraded answers, budgets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from omnirec.domain.vocab import LifecycleStage
from omnirec.logs import LoggingConfig
from omnirec.offers.engine import OfferEngine
from omnirec.offers.policy import in_holdout
from omnirec.service import metrics, offer_servicer
from omnirec.service.config import Role
from omnirec.service.interceptors import ApiInterceptor
from omnirec.service.telemetry import TelemetryInterceptor
from omnirec.v1 import common_pb2, offers_pb2, offers_pb2_grpc
from tests.offers.conftest import EngineFactory, member

KEYS = {"pos-key": Role.POS}
MEMBER = next(f"m{i}" for i in range(100) if not in_holdout("winback-15off60", f"m{i}", 0.1))
POS = (("x-api-key", "pos-key"),)


@pytest.fixture
def samples_dir(tmp_path: Path) -> Iterator[Path]:
    """Metrics on in this process (multi-process files under tmp), off again afterwards."""
    directory = tmp_path / "prometheus"
    metrics.enable(directory)
    yield directory
    metrics.disable()


def _serve(engine: OfferEngine, loop: asyncio.AbstractEventLoop) -> tuple[grpc.aio.Server, int]:
    async def start() -> tuple[grpc.aio.Server, int]:
        spec = offer_servicer.spec(engine, default_deadline_s=5.0)
        server = grpc.aio.server(interceptors=[TelemetryInterceptor(LoggingConfig(access_log="off")),
                                               ApiInterceptor(KEYS, spec.method_roles)])
        spec.add_to_server(spec.servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    return asyncio.run_coroutine_threadsafe(start(), loop).result(10)


def _value(directory: Path, name: str, **labels: str) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return sum(s.value for family in registry.collect() for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def test_coupon_outcomes_and_degraded_offers_are_counted(samples_dir: Path, make_engine: EngineFactory) -> None:
    engine = make_engine([member(MEMBER, "silver", LifecycleStage.AT_RISK)])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server, port = _serve(engine, loop)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = offers_pb2_grpc.OfferServiceStub(channel)
            nbo = stub.NextBestOffer(offers_pb2.NextBestOfferRequest(member_id=MEMBER, channel=common_pb2.CHANNEL_APP,
                                                                     k=3), metadata=POS)
            assert nbo.degraded  # no model serves in this test
            ask = offers_pb2.DecideCouponRequest(request_id="checkout-1", member_id=MEMBER,
                                                 channel=common_pb2.CHANNEL_APP, basket_item_ids=["i4"],
                                                 basket_value_minor_units=8000)
            first, retry = stub.DecideCoupon(ask, metadata=POS), stub.DecideCoupon(ask, metadata=POS)
            assert first.issued and retry.replayed
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(10)
        asyncio.run_coroutine_threadsafe(engine.store.client.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    # Recorded in memory only: the calls wrote nothing to the multi-process files; a worker flushes on a timer
    # and when it stops (here the test is the worker).
    assert _value(samples_dir, "grpc_server_handled_total") == 0
    metrics.flush()
    assert _value(samples_dir, "omnirec_coupon_decisions_total", outcome="issued", reason="issued") == 1
    assert _value(samples_dir, "omnirec_coupon_decisions_total") == 1  # the replay is not a second decision
    assert _value(samples_dir, "omnirec_degraded_answers_total", grpc_method="NextBestOffer",
                  reason="no_model_serving") == 1
    assert _value(samples_dir, "grpc_server_handled_total", grpc_method="DecideCoupon", grpc_code="OK") == 2
