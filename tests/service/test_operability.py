"""`omnirec serve` with metrics and JSON logs: counts summed over two workers, request ids in the log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_harness import API_KEYS, free_port, serve_children, serve_toml, wait_serving

from omnirec.feature_store.config import RedisConfig
from omnirec.offers.catalogue import load_catalogue
from omnirec.offers.config import EXAMPLE_CATALOGUE
from omnirec.v1 import common_pb2
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc

APP = (("x-api-key", API_KEYS["app"]),)
RECOMMEND = {"grpc_type": "unary", "grpc_service": "omnirec.v1.RecommendationService", "grpc_method": "Recommend"}


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


def _scrape_when_flushed(port: int, calls: int) -> list[tuple[str, dict[str, str], float]]:
    """The endpoint's samples once every worker has flushed all `calls` Recommend calls (each flushes its
    in-memory counts every `metrics_flush_interval_s`; a call's metrics are all written by the same flush)."""
    deadline = time.monotonic() + 10
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        samples = _samples(text)
        if _value(samples, "grpc_server_handling_seconds_count", **RECOMMEND) >= calls or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def _access_lines(log: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "omnirec.access"]


def _three_calls(port: int, known_member: str, sent_id: str) -> str:
    """One OK, one INVALID_ARGUMENT and one degraded Recommend on a connection of its own; returns the
    request id the server generated for the OK call (sent without `x-request-id`)."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a new TCP connection: the kernel picks its worker
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = rec_grpc.RecommendationServiceStub(channel)
        ok, call = stub.Recommend.with_call(rec.RecommendRequest(member_id=known_member, k=5,
                                                                 channel=common_pb2.CHANNEL_APP),
                                            metadata=APP, timeout=5)
        assert len(ok.items.item_ids) == 5  # the bundle's list; degraded: no features materialised here
        generated = dict(call.trailing_metadata())["x-request-id"]
        with pytest.raises(grpc.RpcError) as bad:
            stub.Recommend(rec.RecommendRequest(member_id=known_member, k=0, channel=common_pb2.CHANNEL_APP),
                           metadata=(*APP, ("x-request-id", sent_id)), timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(bad.value.trailing_metadata())["x-request-id"] == sent_id
        # Nothing is materialised in this test's namespace: a visitor the model does not know gets a degraded answer.
        degraded = stub.Recommend(rec.RecommendRequest(anonymous_id="visitor-1", k=5, channel=common_pb2.CHANNEL_APP),
                                  metadata=APP, timeout=5)
        assert degraded.info.degraded and len(degraded.items.item_ids) == 5
    return str(generated)


def test_metrics_sum_over_two_workers_and_json_logs_carry_request_ids(
        small_retail_dir: Path, bundle_root: Path, redis_config: RedisConfig, tmp_path: Path,
        known_member: str) -> None:
    port, metrics_port = free_port(), free_port()
    config = serve_toml(tmp_path / "omnirec.toml", small_retail_dir, bundle_root, redis_config, port,
                        tmp_path / "events", metrics_port=metrics_port, poll_interval_s=0.2,
                        metrics_flush_interval_s=0.1)
    config.write_text(config.read_text() + '[logging]\nformat = "json"\naccess_log = "all"\n')
    log = tmp_path / "serve.log"
    env = {**os.environ, "OMNIREC_CONFIG": str(config)}
    with log.open("wb") as err:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "omnirec"), "serve"], env=env, stderr=err,
                                start_new_session=True)
    try:
        wait_serving(port, proc)
        rounds, pids, sent, generated = 0, set(), [], []
        while len(pids) < 2:  # new connections until both workers have answered some
            assert rounds < 40, "every connection went to one worker"
            sent.append(uuid.uuid4().hex)
            generated.append(_three_calls(port, known_member, sent[-1]))
            rounds += 1
            pids = {line["pid"] for line in _access_lines(log)}
        samples = _scrape_when_flushed(metrics_port, 3 * rounds)
        assert _value(samples, "grpc_server_started_total", **RECOMMEND) == 3 * rounds
        assert _value(samples, "grpc_server_handled_total", **RECOMMEND, grpc_code="OK") == 2 * rounds
        assert _value(samples, "grpc_server_handled_total", **RECOMMEND, grpc_code="INVALID_ARGUMENT") == rounds
        assert _value(samples, "grpc_server_handling_seconds_count", **RECOMMEND) == 3 * rounds
        assert _value(samples, "omnirec_degraded_answers_total", grpc_method="Recommend",
                      reason="member_features_unavailable") == 2 * rounds
        assert _value(samples, "omnirec_answers_total", grpc_method="Recommend", reason="next_basket") == rounds
        assert _value(samples, "omnirec_answers_total", grpc_method="Recommend") == 2 * rounds
        versions = [lab for n, lab, _ in samples if n == "omnirec_model_bundle_version"]
        audience = serve_children(proc.pid)[1]  # the audience process follows the bundle too
        assert {lab["pid"] for lab in versions} == {str(p) for p in pids | set(audience)}
        assert _value(samples, "omnirec_model_bundle_created_timestamp_seconds") > 0
        catalogue = load_catalogue(EXAMPLE_CATALOGUE)  # the default catalogue; nothing issued yet
        budgeted = [o for o in catalogue.offers if o.budget.max_count is not None]
        assert budgeted
        for offer in budgeted:
            assert _value(samples, "omnirec_offer_budget_limit", offer_id=offer.id, unit="count") == \
                offer.budget.max_count
            assert _value(samples, "omnirec_offer_budget_spent", offer_id=offer.id, unit="count") == 0

        lines = _access_lines(log)
        by_id = {line["request_id"]: line for line in lines}
        for request_id in sent:
            line = by_id[request_id]
            assert line["status"] == "INVALID_ARGUMENT" and line["method"] == "Recommend"
            assert line["level"] == "INFO" and "T" in str(line["ts"]) and float(line["duration_ms"]) > 0  # type: ignore[arg-type]
        for request_id in generated:
            assert by_id[request_id]["status"] == "OK" and by_id[request_id]["model_version"]
        assert sum(bool(line.get("degraded")) for line in lines) == 2 * rounds
        assert not any("member_id" in line for line in lines)  # [logging] member_ids is off by default

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left: the workers too, not only their parent
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
