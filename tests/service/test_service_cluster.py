"""The service on a real 3-master Redis Cluster: the recommendation and event RPC tests of one Redis, run again
on the cluster (this module's `redis_client` is the cluster's), plus a generation switch while serving."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from redis.cluster import RedisCluster
from service_harness import API_KEYS, RunningServer
from test_events import test_link_identity, test_track_events_applies_logs_and_dedups
from test_rpcs import (
    test_basket_complements,
    test_cold_start_member_is_never_an_error,
    test_recommend_filters_at_store,
    test_recommend_known_member,
)

from omnirec.feature_store.connection import connect
from omnirec.feature_store.materialize import Materializer, compute_features
from omnirec.v1 import common_pb2
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc

ON_CLUSTER = (test_recommend_known_member, test_recommend_filters_at_store, test_cold_start_member_is_never_an_error,
              test_basket_complements, test_track_events_applies_logs_and_dedups, test_link_identity)


@pytest.fixture
def redis_client(cluster_client: RedisCluster) -> RedisCluster:
    return cluster_client


def test_the_server_reads_the_cluster(server: RunningServer) -> None:
    assert server.config.redis.url is not None and server.config.redis.url.startswith("redis+cluster://")


def test_a_generation_switch_reaches_requests(server: RunningServer, known_member: str, store_id: str) -> None:
    """Reload the store with only the member's top item in stock at `store_id`: in-stock answers follow."""
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    md = (("x-api-key", API_KEYS["pos"]),)

    def recommend(in_stock_only: bool) -> list[str]:
        reply = stub.Recommend(rec.RecommendRequest(
            member_id=known_member, channel=common_pb2.CHANNEL_POS, store_id=store_id, k=5,
            filter=common_pb2.ItemFilter(in_stock_only=in_stock_only)), metadata=md, timeout=5)
        assert not reply.info.degraded
        return list(reply.items.item_ids)

    top = recommend(False)[0]
    assert len(recommend(True)) == 5
    features = compute_features(server.retail, server.config.tiers, server.config.lifecycle)
    elsewhere = pc.not_equal(features.stock_store, store_id)
    features = dataclasses.replace(
        features, stock_store=pa.concat_arrays([features.stock_store.filter(elsewhere), pa.array([store_id])]),
        stock_item=pa.concat_arrays([features.stock_item.filter(elsewhere), pa.array([top])]),
        stock_qty=pa.concat_arrays([features.stock_qty.filter(elsewhere), pa.array(["7"])]))
    client = connect(server.config.redis)
    Materializer(client, server.config.redis).load(features)
    client.close()
    assert recommend(True) == [top]
