"""Fixtures of the service suite: a bundle trained once per session, a live server per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis
from service_harness import RunningServer, materialize, service_config

from omnirec.bundle import BundleRegistry, ModelBundle
from omnirec.config import OmnirecConfig
from omnirec.domain.readers import RetailData
from omnirec.domain.vocab import Col
from omnirec.feature_store.config import RedisConfig


@pytest.fixture(scope="session")
def retail(small_retail_dir: Path) -> RetailData:
    return RetailData.read(small_retail_dir)


@pytest.fixture
def redis_config(redis_client: redis.Redis, redis_prefix: str) -> RedisConfig:
    """The test Redis, with this test's private prefix as the feature store namespace."""
    return RedisConfig(url=redis_client.test_url, namespace=redis_prefix)  # type: ignore[attr-defined]


@pytest.fixture
def config(small_retail_dir: Path, bundle_root: Path, redis_config: RedisConfig, tmp_path: Path) -> OmnirecConfig:
    return service_config(small_retail_dir, bundle_root, redis_config, tmp_path / "events")


@pytest.fixture
def server(config: OmnirecConfig, retail: RetailData, redis_client: redis.Redis) -> Iterator[RunningServer]:
    """A server over the session bundle, with the small retailer's features materialised in this test's namespace."""
    materialize(retail, config)
    running = RunningServer(config, retail)
    yield running
    running.stop()


def _most_common(values: pa.ChunkedArray) -> str:
    counts = pc.value_counts(values).to_pylist()
    return str(max(counts, key=lambda c: c["counts"])["values"])


@pytest.fixture(scope="session")
def known_member(retail: RetailData, bundle_root: Path) -> str:
    """A member with purchases who is in the bundle."""
    buyers = retail.events.filter(pc.equal(retail.events[Col.EVENT_TYPE], "purchase"))
    members = ModelBundle.load(BundleRegistry(bundle_root).current_path()).members  # type: ignore[arg-type]
    counts = pc.value_counts(buyers[Col.MEMBER_ID].drop_null()).to_pylist()
    return max((c for c in counts if c["values"] in members), key=lambda c: c["counts"])["values"]


@pytest.fixture(scope="session")
def item_id(retail: RetailData) -> str:
    return _most_common(retail.events[Col.ITEM_ID].drop_null())


@pytest.fixture(scope="session")
def store_id(retail: RetailData) -> str:
    """The physical store with the most items in stock."""
    stocked = retail.inventory.filter(pc.and_(pc.greater(retail.inventory["quantity"], 0),
                                              pc.not_equal(retail.inventory["store_id"], "online")))
    return _most_common(stocked["store_id"])


@pytest.fixture(scope="session")
def category(retail: RetailData) -> str:
    return _most_common(retail.items["category"]).split("/")[0]
