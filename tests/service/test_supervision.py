"""`omnirec serve` supervises its workers: SIGKILLed workers are replaced (and logged), what they had
journaled is recovered, and a service whose workers cannot start exits non-zero."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_harness import API_KEYS, materialize, serve_children, serve_toml

from omnirec.config import OmnirecConfig
from omnirec.domain.readers import RetailData, read_event_log
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.private_server import free_port
from omnirec.v1 import audience_pb2, audience_pb2_grpc, common_pb2, events_pb2, events_pb2_grpc


def _config(tmp_path: Path, small_retail_dir: Path, bundle_root: Path, redis_config: RedisConfig, port: int,
            **service: object) -> Path:
    return serve_toml(tmp_path / "omnirec.toml", small_retail_dir, bundle_root, redis_config, port,
                      tmp_path / "events", **service)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> subprocess.Popen[bytes]:
        log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (the child writes it; closed with the test dir)
        env = {**os.environ, "OMNIREC_CONFIG": str(config)}
        procs.append(subprocess.Popen([str(Path(sys.executable).parent / "omnirec"), "serve"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
        return procs[-1]

    yield start  # type: ignore[misc]
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _workers(proc: subprocess.Popen[bytes]) -> list[int]:
    return serve_children(proc.pid)[0]


def _until(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():  # type: ignore[operator]
        assert time.time() < deadline, what
        time.sleep(0.1)


def _serving(channel: grpc.Channel) -> bool:
    try:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
            health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def test_sigkilled_workers_are_replaced_and_their_journal_recovered(
        serve, small_retail_dir: Path, bundle_root: Path, redis_config: RedisConfig,  # type: ignore[no-untyped-def]
        tmp_path: Path, retail: RetailData) -> None:
    port = free_port()
    # Events stay in the workers' journals (no roll before the kill): only recovery can bring them to the log.
    config = _config(tmp_path, small_retail_dir, bundle_root, redis_config, port, poll_interval_s=3600,
                     event_log_flush_rows=100_000)
    materialize(retail, OmnirecConfig.load(config))
    proc = serve(config)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        _until(lambda: _serving(channel) and len(_workers(proc)) == 2, "omnirec serve did not become healthy")
        first = _workers(proc)
        events = events_pb2_grpc.EventServiceStub(channel)
        for i in range(20):  # several calls, so both workers (one connection each way) journal some
            reply = events.TrackEvents(events_pb2.TrackEventsRequest(events=[events_pb2.Event(
                event_id=f"k{i}", member_id="m0000001", item_id="i000001", channel=common_pb2.CHANNEL_APP,
                event_type=events_pb2.EVENT_TYPE_VIEW)]), metadata=(("x-api-key", API_KEYS["app"]),), timeout=5)
            assert reply.accepted == 1
        assert read_event_log(tmp_path / "events").num_rows == 0  # all still journaled

        os.kill(first[0], signal.SIGKILL)
        _until(lambda: len(_workers(proc)) == 2 and first[0] not in _workers(proc), "worker not replaced")
        for pid in _workers(proc):  # now every worker at once
            os.kill(pid, signal.SIGKILL)
        _until(lambda: len(_workers(proc)) == 2 and not set(_workers(proc)) & set(first), "workers not replaced")
        _until(lambda: _serving(channel), "replacements do not serve")
        _until(lambda: read_event_log(tmp_path / "events").num_rows == 20, "journals not recovered", 30)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    log = (tmp_path / "serve.log").read_text()
    assert log.count("killed by SIGKILL") >= 3 and "replaced" in log


def test_a_killed_audience_process_is_replaced(serve, small_retail_dir: Path, bundle_root: Path,  # type: ignore[no-untyped-def]
                                               redis_config: RedisConfig, tmp_path: Path, retail: RetailData,
                                               item_id: str) -> None:
    port = free_port()
    config = _config(tmp_path, small_retail_dir, bundle_root, redis_config, port)
    materialize(retail, OmnirecConfig.load(config))
    proc = serve(config)
    pull = audience_pb2.StreamAudienceRequest(audience=audience_pb2.AudienceSpec(
        channel=common_pb2.CHANNEL_APP, max_size=3, item_ids=[item_id]))

    def pulled() -> bool:
        try:
            return list(audience_pb2_grpc.AudienceServiceStub(channel).StreamAudience(
                pull, metadata=(("x-api-key", API_KEYS["campaign"]),), timeout=10))[0].header.total == 3
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc  # only while it is being replaced
            return False

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        _until(lambda: _serving(channel) and len(serve_children(proc.pid)[1]) == 1, "omnirec serve did not start")
        (first,) = serve_children(proc.pid)[1]
        # Campaign pulls yield to the real-time workers: a lower priority and the batch policy (never
        # preempting a worker that wakes up for a request); the workers keep the normal policy.
        assert os.sched_getscheduler(first) == os.SCHED_BATCH
        assert os.getpriority(os.PRIO_PROCESS, first) - os.getpriority(os.PRIO_PROCESS, proc.pid) == 10
        assert all(os.sched_getscheduler(w) == os.SCHED_OTHER for w in serve_children(proc.pid)[0])
        assert pulled()
        os.kill(first, signal.SIGKILL)
        _until(lambda: serve_children(proc.pid)[1] not in ([], [first]), "audience process not replaced")
        _until(pulled, "the replacement does not answer")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert "audience (pid" in (tmp_path / "serve.log").read_text()


def test_audience_health_follows_the_audience_process(serve, small_retail_dir: Path, bundle_root: Path,  # type: ignore[no-untyped-def]
                                                     redis_config: RedisConfig, tmp_path: Path,
                                                     retail: RetailData) -> None:
    """grpc.health.v1 says AudienceService NOT_SERVING from the audience process's death to its replacement's
    start, on every worker, while the other services stay SERVING; then SERVING again."""
    port = free_port()
    # The replacement starts 4 s after the death: a window that a 1 s health check cannot miss.
    config = _config(tmp_path, small_retail_dir, bundle_root, redis_config, port, worker_restart_backoff_s=4)
    materialize(retail, OmnirecConfig.load(config))
    proc = serve(config)
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    # Separate connections, which the kernel spreads over both workers (SO_REUSEPORT); each worker checks alone.
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(6)]

    def statuses(service: str) -> set[int | None]:
        def check(channel: grpc.Channel) -> int | None:
            try:
                return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                 timeout=2).status
            except grpc.RpcError:
                return None
        return {check(channel) for channel in channels}

    audience, others = "omnirec.v1.AudienceService", ("", "omnirec.v1.RecommendationService",
                                                      "omnirec.v1.EventService", "omnirec.v1.OfferService")
    try:
        _until(lambda: all(statuses(name) == {serving} for name in (audience, *others))
               and len(serve_children(proc.pid)[1]) == 1, "omnirec serve did not become healthy")
        (first,) = serve_children(proc.pid)[1]
        os.kill(first, signal.SIGKILL)
        _until(lambda: statuses(audience) == {not_serving}, "AudienceService still SERVING", timeout=3.5)
        assert serve_children(proc.pid)[1] == []  # not replaced yet: the window is the back-off
        for name in others:
            assert statuses(name) == {serving}, name
        _until(lambda: statuses(audience) == {serving}, "AudienceService not SERVING after the replacement")
        assert serve_children(proc.pid)[1] not in ([], [first])
    finally:
        for channel in channels:
            channel.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_workers_die_with_a_killed_parent(serve, small_retail_dir: Path, bundle_root: Path,  # type: ignore[no-untyped-def]
                                         redis_config: RedisConfig, tmp_path: Path) -> None:
    """A serving parent killed outright (SIGKILL: no chance to stop its workers) leaves no worker serving."""
    port = free_port()
    proc = serve(_config(tmp_path, small_retail_dir, bundle_root, redis_config, port))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        _until(lambda: _serving(channel) and len(_workers(proc)) == 2, "omnirec serve did not become healthy")
    children = [*_workers(proc), *serve_children(proc.pid)[1]]
    proc.kill()
    proc.wait()

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"  # reaped by init soon
        except FileNotFoundError:
            return True

    _until(lambda: all(gone(pid) for pid in children), "workers outlived their parent", timeout=30)


def test_serve_exits_non_zero_when_workers_cannot_start(serve, small_retail_dir: Path,  # type: ignore[no-untyped-def]
                                                       bundle_root: Path, redis_config: RedisConfig,
                                                       tmp_path: Path) -> None:
    with socket.socket() as taken:  # a listener without SO_REUSEPORT: no worker can bind the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _config(tmp_path, small_retail_dir, bundle_root, redis_config, port,
                         worker_restart_backoff_s=0.05, worker_max_quick_restarts=2)
        proc = serve(config)
        assert proc.wait(120) == 1
    assert "giving up" in (tmp_path / "serve.log").read_text()
