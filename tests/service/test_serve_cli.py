"""`omnirec serve`: worker processes sharing one port, answering, and draining on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_harness import API_KEYS, materialize, serve_children, serve_toml

from omnirec.config import OmnirecConfig
from omnirec.domain.readers import RetailData
from omnirec.feature_store.config import RedisConfig
from omnirec.v1 import audience_pb2, audience_pb2_grpc, common_pb2
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_two_workers_serve_one_port_and_stop_on_sigterm(small_retail_dir: Path, bundle_root: Path,
                                                        redis_config: RedisConfig, tmp_path: Path, retail: RetailData,
                                                        known_member: str, item_id: str, event_loop: str) -> None:
    port = _free_port()
    config = serve_toml(tmp_path / "omnirec.toml", small_retail_dir, bundle_root, redis_config, port,
                        tmp_path / "events", event_loop=f'"{event_loop}"')
    materialize(retail, OmnirecConfig.load(config))
    env = {**os.environ, "OMNIREC_CONFIG": str(config)}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "omnirec"), "serve"], env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.time() + 60
            while True:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert time.time() < deadline and proc.poll() is None, "omnirec serve did not become healthy"
                time.sleep(0.2)
            workers, audience = serve_children(proc.pid)
            assert len(workers) == 2 and len(audience) == 1
            reply = rec_grpc.RecommendationServiceStub(channel).Recommend(  # reads Redis on the worker's loop
                rec.RecommendRequest(member_id=known_member, channel=common_pb2.CHANNEL_APP, k=5,
                                     exclude_purchased=True),
                metadata=(("x-api-key", API_KEYS["app"]),), timeout=5)
            assert len(reply.items.item_ids) == 5 and not reply.info.degraded, reply.info.degraded_reason
            pull = audience_pb2.StreamAudienceRequest(audience=audience_pb2.AudienceSpec(  # from the audience process
                channel=common_pb2.CHANNEL_APP, max_size=5, item_ids=[item_id]))
            messages = list(audience_pb2_grpc.AudienceServiceStub(channel).StreamAudience(
                pull, metadata=(("x-api-key", API_KEYS["campaign"]),), timeout=30))
            assert messages[0].header.total == 5 and len(messages[1].chunk.member_ids) == 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
