"""Degraded answers without Redis, deadlines, hot reload under load, health checking and reflection."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from service_harness import API_KEYS, RunningServer, materialize, service_config

from omnirec.bundle import BundleRegistry, Manifest
from omnirec.config import OmnirecConfig
from omnirec.domain.readers import RetailData
from omnirec.feature_store.config import RedisConfig
from omnirec.v1 import admin_pb2, admin_pb2_grpc, common_pb2, events_pb2, events_pb2_grpc
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc

MD = (("x-api-key", API_KEYS["app"]),)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a hung Redis."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server(small_retail_dir: Path, bundle_root: Path, retail: RetailData, tmp_path: Path, port: int,
            **kw: float) -> RunningServer:
    redis = RedisConfig(url=f"redis://127.0.0.1:{port}/0", namespace="unreachable")
    return RunningServer(service_config(small_retail_dir, bundle_root, redis, tmp_path / "events", **kw), retail)


def test_degraded_when_redis_is_down(small_retail_dir: Path, bundle_root: Path, retail: RetailData,
                                     tmp_path: Path, known_member: str) -> None:
    server = _server(small_retail_dir, bundle_root, retail, tmp_path, _closed_port())
    try:
        stub = rec_grpc.RecommendationServiceStub(server.channel)
        reply = stub.Recommend(rec.RecommendRequest(member_id=known_member, channel=common_pb2.CHANNEL_APP, k=5,
                                                    filter=common_pb2.ItemFilter(in_stock_only=True),
                                                    exclude_purchased=True), metadata=MD, timeout=5)
        assert len(reply.items.item_ids) == 5 and reply.info.degraded and reply.info.degraded_reason
        assert not reply.info.applied_filters  # neither stock nor purchases could be checked
        assert set(reply.items.reasons) == {common_pb2.REASON_NEXT_BASKET}  # the bundle's list, as computed
        cold = stub.Recommend(rec.RecommendRequest(member_id="nobody", channel=common_pb2.CHANNEL_POS,
                                                   store_id="s0", k=5), metadata=MD, timeout=5)
        assert len(cold.items.item_ids) == 5 and cold.info.degraded
        events = events_pb2_grpc.EventServiceStub(server.channel)
        with pytest.raises(grpc.RpcError) as err:
            events.TrackEvents(events_pb2.TrackEventsRequest(events=[events_pb2.Event(
                event_id="e1", member_id="m", item_id="i", channel=common_pb2.CHANNEL_APP,
                event_type=events_pb2.EVENT_TYPE_VIEW)]), metadata=MD, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_hung_redis_never_holds_a_request_past_its_deadline(small_retail_dir: Path, bundle_root: Path,
                                                            retail: RetailData, tmp_path: Path, silent_port: int,
                                                            known_member: str) -> None:
    server = _server(small_retail_dir, bundle_root, retail, tmp_path, silent_port)
    try:
        stub = rec_grpc.RecommendationServiceStub(server.channel)
        t0 = time.perf_counter()
        reply = stub.Recommend(rec.RecommendRequest(member_id=known_member, channel=common_pb2.CHANNEL_APP, k=5,
                                                    exclude_purchased=True), metadata=MD, timeout=0.3)
        assert time.perf_counter() - t0 < 0.3
        assert reply.info.degraded and len(reply.items.item_ids) == 5
        # Without the purchase filter the bundle's list still wants the purchases made since it was computed:
        # within the deadline, the list as computed, flagged degraded.
        t0 = time.perf_counter()
        plain = stub.Recommend(rec.RecommendRequest(member_id=known_member, channel=common_pb2.CHANNEL_APP, k=5),
                               metadata=MD, timeout=0.3)
        assert time.perf_counter() - t0 < 0.3
        assert plain.info.degraded and plain.items.item_ids == reply.items.item_ids
    finally:
        server.stop()


def _publish_copy(root: Path) -> int:
    """Publish the current bundle again under the next version (a retrain without the 3 s of training)."""
    registry = BundleRegistry(root)
    version = registry.next_version()
    dest = registry.path(version)
    shutil.copytree(registry.current_path(), dest)  # type: ignore[arg-type]
    Manifest.read(dest).model_copy(update={"version": version}).write(dest)
    registry.publish(version)
    return version


def test_hot_reload_under_load_fails_nothing(small_retail_dir: Path, bundle_root: Path, retail: RetailData,
                                            redis_config: RedisConfig, tmp_path: Path, known_member: str) -> None:
    root = tmp_path / "models"
    shutil.copytree(bundle_root, root, symlinks=True)
    config = service_config(small_retail_dir, root, redis_config, tmp_path / "events", poll_interval_s=0.1)
    server = RunningServer(config, retail)
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    versions: set[str] = set()
    errors: list[grpc.RpcError] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                reply = stub.Recommend(rec.RecommendRequest(member_id=known_member, channel=common_pb2.CHANNEL_APP,
                                                            k=10), metadata=MD, timeout=5)
                versions.add(reply.info.model_version)
            except grpc.RpcError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        new = _publish_copy(root)
        deadline = time.time() + 10
        while str(new) not in versions and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    assert not errors
    assert str(new) in versions and len(versions) == 2


def test_admin_reload_picks_up_a_new_bundle_now(small_retail_dir: Path, bundle_root: Path, retail: RetailData,
                                                redis_config: RedisConfig, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(bundle_root, root, symlinks=True)
    config = service_config(small_retail_dir, root, redis_config, tmp_path / "events", poll_interval_s=3600)
    server = RunningServer(config, retail)
    try:
        admin = admin_pb2_grpc.AdminServiceStub(server.channel)
        md = (("x-api-key", API_KEYS["admin"]),)
        before = admin.GetModelInfo(admin_pb2.GetModelInfoRequest(), metadata=md, timeout=5).model.version
        new = _publish_copy(root)
        after = admin.ReloadModel(admin_pb2.ReloadModelRequest(), metadata=md, timeout=30).model.version
        assert before != after == str(new)
    finally:
        server.stop()


def test_health_and_reflection_need_no_key(server: RunningServer) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    for name in ("", "omnirec.v1.RecommendationService", "omnirec.v1.EventService", "omnirec.v1.AdminService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    services = set(ProtoReflectionDescriptorDatabase(server.channel).get_services())
    assert {"omnirec.v1.RecommendationService", "omnirec.v1.EventService", "omnirec.v1.AdminService",
            "grpc.health.v1.Health"} <= services


def test_no_model_yet_is_unavailable_until_one_is_published(small_retail_dir: Path, bundle_root: Path,
                                                            retail: RetailData, redis_config: RedisConfig,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    server = RunningServer(service_config(small_retail_dir, root, redis_config, tmp_path / "events",
                                          poll_interval_s=0.1), retail)
    try:
        health = health_pb2_grpc.HealthStub(server.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        stub = rec_grpc.RecommendationServiceStub(server.channel)
        request = rec.RecommendRequest(member_id="m", channel=common_pb2.CHANNEL_APP, k=5)
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(request, metadata=MD, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        shutil.copytree(BundleRegistry(bundle_root).current_path(), root / "v1")  # type: ignore[arg-type]
        BundleRegistry(root).publish(1)
        deadline = time.time() + 10
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != \
                health_pb2.HealthCheckResponse.SERVING and time.time() < deadline:
            time.sleep(0.05)
        assert len(stub.Recommend(request, metadata=MD, timeout=5).items.item_ids) == 5
    finally:
        server.stop()


def test_health_is_per_service_and_follows_the_feature_store(config: OmnirecConfig, retail: RetailData) -> None:
    """Before materialisation events, offers and audiences cannot answer: NOT_SERVING; recommendations degrade
    and stay SERVING. Once the features are loaded every service turns SERVING within a poll interval (audiences
    once the audience process accepts calls, too)."""
    server = RunningServer(config, retail)
    health = health_pb2_grpc.HealthStub(server.channel)

    def status(name: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status

    try:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert status("") == status("omnirec.v1.RecommendationService") == status("omnirec.v1.AdminService") == serving
        for name in ("omnirec.v1.EventService", "omnirec.v1.OfferService", "omnirec.v1.AudienceService"):
            assert status(name) == not_serving
        materialize(retail, config)
        deadline = time.time() + 30  # AudienceService also waits for the (niced) audience process to be up
        names = ("omnirec.v1.EventService", "omnirec.v1.OfferService", "omnirec.v1.AudienceService")
        while {status(name) for name in names} != {serving} and time.time() < deadline:
            time.sleep(0.05)
        for name in names:
            assert status(name) == serving, name
    finally:
        server.stop()
