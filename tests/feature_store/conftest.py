"""Feature-store fixtures: a per-test namespace on the real Redis and on a real Redis Cluster (every store
test runs on both), and the small retailer's features."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from omnirec.domain import LifecycleRules, TierLadder
from omnirec.domain.readers import RetailData
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.materialize import BatchFeatures, LoadReport, Materializer, compute_features
from omnirec.feature_store.reader import FeatureReader


@pytest.fixture(scope="session")
def small_retail(small_retail_dir: Path) -> RetailData:
    return RetailData.read(small_retail_dir)


@pytest.fixture(scope="session")
def features(small_retail: RetailData) -> BatchFeatures:
    return compute_features(small_retail, TierLadder(), LifecycleRules(), recent_items=20, purchased_items=50)


@pytest.fixture(params=["redis", "cluster"])
def redis_client(request: pytest.FixtureRequest) -> Iterator[redis.Redis | RedisCluster]:
    """One Redis, then a 3-master Redis Cluster: the store must behave the same on both."""
    yield request.getfixturevalue("single_client" if request.param == "redis" else "cluster_client")


@pytest.fixture
def store_config(redis_client: redis.Redis, redis_prefix: str) -> RedisConfig:
    """Each test owns the namespace `redis_prefix`, which the `redis_client` fixture cleans up."""
    return RedisConfig(url=redis_client.test_url, namespace=redis_prefix,  # type: ignore[attr-defined]
                       recent_items=20, purchased_items=50, socket_timeout_s=2.0)


@pytest.fixture
def loaded(redis_client: redis.Redis, store_config: RedisConfig, features: BatchFeatures) -> LoadReport:
    return Materializer(redis_client, store_config).load(features)


@pytest.fixture
def reader(redis_client: redis.Redis, store_config: RedisConfig, loaded: LoadReport) -> FeatureReader:
    return FeatureReader(redis_client, store_config)
