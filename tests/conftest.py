"""Shared fixtures: a small simulated retailer, public data paths and a real Redis with a private key prefix."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cluster import LocalCluster
from redis.cluster import RedisCluster

from omnirec.simulator import SimulationConfig, simulate

SHARED_DATA = Path(os.environ.get("OMNIREC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TEST_REDIS_URL = os.environ.get("OMNIREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/1")
"""Tests own logical database 1, so the per-test cleanup scan never wades through demo or benchmark keys (db 0)."""


@pytest.fixture(scope="session")
def small_retail_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1,000-member retailer simulated once per test session (read-only for tests)."""
    out = tmp_path_factory.mktemp("retail")
    simulate(SimulationConfig(n_members=1_000, n_items=400, seed=7), out, progress=False)
    return out


SMALL_RANKER = {"windows": 2, "n_estimators": 60}
"""The next-basket ranker's settings for the test bundles: fewer trees and windows keep a session's training
within its fixture's timeout on a loaded machine (the defaults are what `bench/next_basket.py` measures)."""


@pytest.fixture(scope="session")
def bundle_root(small_retail_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle trained once per session by the real pipeline on the small simulated retailer."""
    from omnirec.training.config import TrainConfig
    from omnirec.training.pipeline import train

    root = tmp_path_factory.mktemp("models")
    train(small_retail_dir, TrainConfig(bundle_root=root, ranker=SMALL_RANKER), force=True, progress=False)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"{SHARED_DATA} is missing: the repository expects ../shared beside it")
    return SHARED_DATA


def _private_prefix(client: redis.Redis | RedisCluster, url: str) -> Iterator[redis.Redis | RedisCluster]:
    """`client` with its own key prefix (`client.test_prefix`) and URL (`client.test_url`); every key under
    the prefix is deleted afterwards (on a cluster, from every primary)."""
    client.ping()
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    client.test_prefix = prefix  # type: ignore[union-attr]
    client.test_url = url  # type: ignore[union-attr]
    yield client
    pipe = client.pipeline(transaction=False)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        pipe.delete(key)
    pipe.execute()
    client.close()


@pytest.fixture
def single_client() -> Iterator[redis.Redis]:
    """The real Redis server (CI starts one); each test gets its own prefix in `client.test_prefix`."""
    yield from _private_prefix(redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=5), TEST_REDIS_URL)


@pytest.fixture
def redis_client(single_client: redis.Redis) -> redis.Redis:
    """The Redis most tests use: `single_client` (suites that also run on a cluster override this)."""
    return single_client


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real 3-master Redis Cluster on free local ports, started once per test session."""
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster) -> Iterator[RedisCluster]:
    """A client of the session's cluster, with a private prefix like `redis_client`."""
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0], socket_timeout=5)
    yield from _private_prefix(client, redis_cluster.url)


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local Spark session for the whole test run (Spark's start-up costs seconds): two cores, few
    shuffle partitions, no UI. Engine code finds it as the active session."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers need this venv's packages
    session = (SparkSession.builder.master("local[2]").appName("omnirec-tests")
               .config("spark.sql.shuffle.partitions", 2).config("spark.default.parallelism", 2)
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.memory", "1g").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> str:
    return redis_client.test_prefix  # type: ignore[attr-defined,no-any-return]
