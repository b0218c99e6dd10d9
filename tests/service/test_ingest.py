"""Accept -> log -> apply as one unit: fault injection on a real server over a private redis-server.

Each test pauses or cuts Redis in the middle of a TrackEvents/LinkIdentity call, so it runs its own
redis-server (never the shared one other suites use), then retries and checks the event was taken exactly
once: once in the event log (as the batch jobs read it) and once in the online store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest
import redis
from service_harness import API_KEYS, RunningServer, materialize, service_config

from omnirec.config import OmnirecConfig
from omnirec.domain.readers import RetailData, read_event_log, read_link_log
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.private_server import PrivateRedis
from omnirec.feature_store.reader import FeatureReader
from omnirec.v1 import common_pb2, events_pb2, events_pb2_grpc

MD = (("x-api-key", API_KEYS["pos"]),)
MEMBER = "m0000001"


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis() as server:
        yield server


@pytest.fixture
def config(small_retail_dir: Path, bundle_root: Path, private_redis: PrivateRedis, tmp_path: Path) -> OmnirecConfig:
    return service_config(small_retail_dir, bundle_root, RedisConfig(url=private_redis.url, namespace="ingest"),
                          tmp_path / "events")


@pytest.fixture
def server(config: OmnirecConfig, retail: RetailData) -> Iterator[RunningServer]:
    materialize(retail, config)
    running = RunningServer(config, retail)
    yield running
    running.stop()


def _purchase(event_id: str, item_id: str, store_id: str) -> events_pb2.TrackEventsRequest:
    return events_pb2.TrackEventsRequest(events=[events_pb2.Event(
        event_id=event_id, member_id=MEMBER, item_id=item_id, channel=common_pb2.CHANNEL_POS, store_id=store_id,
        event_type=events_pb2.EVENT_TYPE_PURCHASE, quantity=2, price_minor_units=350)])


class _Observed:
    """What one purchase should change exactly once: the store's stock and the member's POS activity."""

    def __init__(self, server: RunningServer, item_id: str, store_id: str) -> None:
        self.client = redis.Redis.from_url(server.config.redis.url or "", socket_timeout=5)
        self.reader = FeatureReader(self.client, server.config.redis)
        self.log_dir = server.config.service.event_log_dir
        self.item_id, self.store_id = item_id, store_id
        self.before = self.state()

    def state(self) -> tuple[int, int]:
        got = self.reader.read_request(MEMBER, item_ids=[self.item_id], store_id=self.store_id)
        assert got.profile is not None
        return got.stock[self.item_id], got.profile.activity[Channel.POS]

    def assert_taken_once(self, event_id: str) -> None:
        stock, activity = self.before
        assert self.state() == (stock - 2, activity + 1)
        assert read_event_log(self.log_dir).num_rows == 1  # what `omnirec train` and `materialize` read
        logged = [pq.read_table(f)["event_id"].to_pylist() for f in self.log_dir.glob("events-*.parquet")]
        assert {e for ids in logged for e in ids} == {event_id}


def test_deadline_expiring_mid_write_then_retry_takes_the_event_once(server: RunningServer, private_redis: PrivateRedis,
                                                                     item_id: str, store_id: str) -> None:
    observed = _Observed(server, item_id, store_id)
    stub = events_pb2_grpc.EventServiceStub(server.channel)
    observed.client.client_pause(400, all=False)  # reads go through, the write script waits
    with pytest.raises(grpc.RpcError) as err:
        stub.TrackEvents(_purchase("p1", item_id, store_id), metadata=MD, timeout=0.1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.6)  # the unit was not cancelled with the call: it finishes once Redis takes writes again
    reply = stub.TrackEvents(_purchase("p1", item_id, store_id), metadata=MD, timeout=5)
    assert (reply.accepted, reply.duplicates) == (0, 1)
    observed.assert_taken_once("p1")


def test_retry_racing_the_unfinished_call_takes_the_event_once(server: RunningServer, item_id: str,
                                                               store_id: str) -> None:
    observed = _Observed(server, item_id, store_id)
    stub = events_pb2_grpc.EventServiceStub(server.channel)
    observed.client.client_pause(300, all=False)
    for deadline in (0.002, 0.05, 5.0):  # the retries arrive while the first call's write still waits
        try:
            reply = stub.TrackEvents(_purchase("p2", item_id, store_id), metadata=MD, timeout=deadline)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert reply.accepted + reply.duplicates == 1
    observed.assert_taken_once("p2")


def test_connection_cut_mid_write_then_retry_takes_the_event_once(server: RunningServer, item_id: str,
                                                                  store_id: str) -> None:
    observed = _Observed(server, item_id, store_id)
    stub = events_pb2_grpc.EventServiceStub(server.channel)
    observed.client.client_pause(2000, all=False)
    errors: list[grpc.StatusCode] = []

    def call() -> None:
        try:
            stub.TrackEvents(_purchase("p3", item_id, store_id), metadata=MD, timeout=5)
        except grpc.RpcError as exc:
            errors.append(exc.code())

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # logged, its write script queued behind the pause
    observed.client.client_kill_filter(_type="normal", skipme=True)  # the write never runs
    observed.client.client_unpause()
    caller.join(10)
    assert errors == [grpc.StatusCode.UNAVAILABLE]
    assert observed.state() == observed.before  # in the log, not in Redis: the retry must apply it
    reply = stub.TrackEvents(_purchase("p3", item_id, store_id), metadata=MD, timeout=5)
    assert (reply.accepted, reply.duplicates) == (1, 0)
    observed.assert_taken_once("p3")


def test_identity_link_is_logged_before_it_is_applied(server: RunningServer) -> None:
    stub = events_pb2_grpc.EventServiceStub(server.channel)
    admin = redis.Redis.from_url(server.config.redis.url or "", socket_timeout=5)
    admin.client_pause(300, all=False)
    with pytest.raises(grpc.RpcError) as err:
        stub.LinkIdentity(events_pb2.LinkIdentityRequest(anonymous_id="dev-x", member_id=MEMBER), metadata=MD,
                          timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    stub.LinkIdentity(events_pb2.LinkIdentityRequest(anonymous_id="dev-x", member_id=MEMBER), metadata=MD,
                      timeout=5)
    reader = FeatureReader(admin, server.config.redis)
    assert reader.read_request(anonymous_id="dev-x").member_id == MEMBER
    links = read_link_log(server.config.service.event_log_dir)
    assert set(zip(links["anonymous_id"].to_pylist(), links["member_id"].to_pylist(), strict=True)) == {
        ("dev-x", MEMBER)}
