"""Member state in the feature store (`[service] member_state_in_store_above`): a replica that maps no member
ids, factors or lists answers Recommend exactly as one that holds them, on one Redis and on a 3-master
cluster, reading the member's lists in the request's one feature-store round trip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster
from service_harness import API_KEYS, RunningServer

from omnirec.bundle import BundleRegistry, ModelBundle
from omnirec.config import OmnirecConfig
from omnirec.domain.readers import RetailData
from omnirec.feature_store.connection import connect
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.materialize import Materializer, MemberListSource, compute_features
from omnirec.v1 import common_pb2
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc


@pytest.fixture(params=["redis", "cluster"])
def redis_client(request: pytest.FixtureRequest) -> Iterator[redis.Redis | RedisCluster]:
    yield request.getfixturevalue("single_client" if request.param == "redis" else "cluster_client")


@pytest.fixture(scope="module")
def bundle(bundle_root: Path) -> ModelBundle:
    return ModelBundle.load(BundleRegistry(bundle_root).current_path())  # type: ignore[arg-type]


def _materialize(retail: RetailData, config: OmnirecConfig, lists: MemberListSource) -> None:
    client = connect(config.redis)
    Materializer(client, config.redis).load(compute_features(retail, config.tiers, config.lifecycle),
                                            member_lists=lists)
    client.close()


@pytest.fixture
def servers(config: OmnirecConfig, retail: RetailData, bundle: ModelBundle) -> Iterator[tuple[RunningServer,
                                                                                            RunningServer]]:
    """A replica holding member state and one reading it from the store, over the same bundle and store;
    100 stored items cover the stock check's over-fetch (4k + 20) up to k = 20."""
    _materialize(retail, config, MemberListSource.from_bundle(bundle, 100))
    lean_config = config.model_copy(update={"service": config.service.model_copy(
        update={"member_state_in_store_above": 0})})
    held, lean = RunningServer(config, retail), RunningServer(lean_config, retail)
    yield held, lean
    held.stop()
    lean.stop()


def _ask(server: RunningServer, **request: object) -> rec.RecommendResponse:
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    return stub.Recommend(rec.RecommendRequest(**request), metadata=(("x-api-key", API_KEYS["pos"]),),  # type: ignore[arg-type]
                          timeout=5)


def test_store_held_member_state_answers_as_bundle_held(servers: tuple[RunningServer, RunningServer],
                                                         bundle: ModelBundle, known_member: str, store_id: str) -> None:
    held, lean = servers
    lean_bundle = lean.state.models.get().bundle
    assert lean_bundle.members_in_store and len(lean_bundle.members) == 0 and not held.state.models.get().bundle \
        .members_in_store
    members = [known_member, *bundle.members.external_ids[[0, len(bundle.members) // 3]].tolist(), "never-seen"]
    requests = [
        {"channel": common_pb2.CHANNEL_APP, "k": 10},
        {"channel": common_pb2.CHANNEL_APP, "k": 10, "exclude_purchased": True},
        {"channel": common_pb2.CHANNEL_POS, "store_id": store_id, "k": 5, "exclude_purchased": True,
         "filter": common_pb2.ItemFilter(in_stock_only=True)},
        {"channel": common_pb2.CHANNEL_WEB, "k": 10, "filter": common_pb2.ItemFilter(in_stock_only=True)},
        {"channel": common_pb2.CHANNEL_APP, "k": 10, "intent": rec.INTENT_BUY_AGAIN},
        {"channel": common_pb2.CHANNEL_APP, "k": 10, "intent": rec.INTENT_DISCOVER},
    ]
    for member_id in members:
        for request in requests:
            want, got = _ask(held, member_id=member_id, **request), _ask(lean, member_id=member_id, **request)
            assert list(got.items.item_ids) == list(want.items.item_ids), (member_id, request)
            assert list(got.items.reasons) == list(want.items.reasons)
            assert list(got.items.scores) == pytest.approx(list(want.items.scores), rel=1e-5)
            assert list(got.info.applied_filters) == list(want.info.applied_filters)
            assert not got.info.degraded and got.member_id == want.member_id
    personal = {common_pb2.REASON_NEXT_BASKET, common_pb2.REASON_COLLABORATIVE}  # the stored lists, not content
    assert set(_ask(lean, member_id=known_member, channel=common_pb2.CHANNEL_APP, k=10).items.reasons) <= personal


def test_lists_of_another_bundle_are_not_served(config: OmnirecConfig, retail: RetailData, bundle: ModelBundle,
                                                known_member: str) -> None:
    stale = MemberListSource.from_bundle(bundle, 100)
    _materialize(retail, config, MemberListSource(bundle.version + 1, stale.member_ids, stale.columns))
    lean = RunningServer(config.model_copy(update={"service": config.service.model_copy(
        update={"member_state_in_store_above": 0})}), retail)
    try:
        reply = _ask(lean, member_id=known_member, channel=common_pb2.CHANNEL_APP, k=5)
    finally:
        lean.stop()
    assert len(reply.items.item_ids) == 5 and common_pb2.REASON_COLLABORATIVE not in reply.items.reasons
    assert reply.info.degraded and f"bundle v{bundle.version + 1}" in reply.info.degraded_reason


def test_a_known_members_missing_lists_answer_degraded_not_as_a_cold_start(
        config: OmnirecConfig, retail: RetailData, bundle: ModelBundle, known_member: str,
        redis_client: redis.Redis | RedisCluster) -> None:
    """Materialisation gives every profiled member an entry (empty for those the bundle does not know), so a
    known member without one (a load cut short, an evicted key) is told apart from a cold start."""
    every = MemberListSource.from_bundle(bundle, 100)
    lists = MemberListSource(bundle.version, every.member_ids.slice(0, len(every.member_ids) - 3), every.columns)
    unknown = every.member_ids.slice(len(every.member_ids) - 3).to_pylist()  # as if trained without them
    _materialize(retail, config, lists)
    generation = int(redis_client.hget(Keys(config.redis.namespace).pointer(), "generation"))  # type: ignore[arg-type]
    assert redis_client.delete(Keys(config.redis.namespace, generation).member_top(known_member)) == 1
    lean = RunningServer(config.model_copy(update={"service": config.service.model_copy(
        update={"member_state_in_store_above": 0})}), retail)
    try:
        missing = _ask(lean, member_id=known_member, channel=common_pb2.CHANNEL_APP, k=5)
        cold = [_ask(lean, member_id=m, channel=common_pb2.CHANNEL_APP, k=5) for m in unknown]
    finally:
        lean.stop()
    assert missing.info.degraded and "member lists missing from the feature store" in missing.info.degraded_reason
    assert len(missing.items.item_ids) == 5 and common_pb2.REASON_COLLABORATIVE not in missing.items.reasons
    assert all(not c.info.degraded and len(c.items.item_ids) == 5 for c in cold)
    assert all(set(c.items.reasons) == {common_pb2.REASON_CONTENT_COLD_START} for c in cold)
