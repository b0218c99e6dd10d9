"""Whatever TrackEvents accepts, the batch jobs read: unknown items are refused (the online catalogue in
Redis decides), unknown members become new members, and `train` and `materialize` run on the live log."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import pytest
import redis
from google.protobuf import timestamp_pb2
from service_harness import API_KEYS, RunningServer, materialize, service_config

from omnirec.domain import LifecycleRules, TierLadder
from omnirec.domain.readers import RetailData, read_event_log
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.materialize import materialize as materialize_job
from omnirec.feature_store.reader import FeatureReader
from omnirec.training.config import TrainConfig
from omnirec.training.pipeline import train
from omnirec.v1 import common_pb2, events_pb2, events_pb2_grpc
from tests.conftest import SMALL_RANKER

MD = (("x-api-key", API_KEYS["pos"]),)


def _event(event_id: str, **fields: object) -> events_pb2.Event:
    base: dict[str, object] = {"event_id": event_id, "channel": common_pb2.CHANNEL_APP,
                               "event_type": events_pb2.EVENT_TYPE_VIEW,
                               "event_time": timestamp_pb2.Timestamp(seconds=int(time.time()) - 60)}
    return events_pb2.Event(**{**base, **fields})  # type: ignore[arg-type]


def test_unknown_item_is_refused_and_everything_accepted_feeds_train_and_materialize(
        small_retail_dir: Path, bundle_root: Path, redis_config: RedisConfig, redis_client: redis.Redis,
        retail: RetailData, tmp_path: Path, item_id: str, store_id: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(small_retail_dir, data)
    config = service_config(data, bundle_root, redis_config, data / "events_live")
    materialize(retail, config)
    server = RunningServer(config, retail)
    try:
        stub = events_pb2_grpc.EventServiceStub(server.channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.TrackEvents(events_pb2.TrackEventsRequest(events=[
                _event("ok", member_id="m0000001", item_id=item_id),
                _event("bad", member_id="m0000001", item_id="no-such-item")]), metadata=MD, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("events[1].item_id:")
        reply = stub.TrackEvents(events_pb2.TrackEventsRequest(events=[
            _event("new-view", member_id="brand-new-member", item_id=item_id),
            _event("new-buy", member_id="brand-new-member", item_id=item_id, channel=common_pb2.CHANNEL_POS,
                   store_id=store_id, event_type=events_pb2.EVENT_TYPE_PURCHASE, quantity=1_000,
                   price_minor_units=100_000_000),
            _event("anon", anonymous_id="device-new", item_id=item_id),
            _event("visit", member_id="m0000002", channel=common_pb2.CHANNEL_STORE, store_id=store_id,
                   event_type=events_pb2.EVENT_TYPE_STORE_VISIT)]), metadata=MD, timeout=5)
        assert reply.accepted == 4
        stub.LinkIdentity(events_pb2.LinkIdentityRequest(anonymous_id="device-new", member_id="another-new"),
                          metadata=MD, timeout=5)
    finally:
        server.stop()
    assert read_event_log(data / "events_live").num_rows == 4  # "ok" was never taken: the batch was refused

    retail_now = RetailData.read(data)  # what both jobs read: the export plus the live log
    assert {"brand-new-member", "another-new"} <= set(retail_now.members["member_id"].to_pylist())
    result = train(data, TrainConfig(bundle_root=tmp_path / "models", ranker=SMALL_RANKER), force=True, progress=False)
    assert result.version >= 1
    store = RedisConfig(url=redis_config.url, namespace=f"{redis_config.namespace}-rebuilt")
    loaded = materialize_job(data, store, TierLadder(), LifecycleRules(), progress=False)
    assert loaded.load.members == retail_now.members.num_rows
    assert FeatureReader(redis_client, store).read_request("brand-new-member").profile is not None
