"""Shared fixtures: a small simulated retailer, public data paths and a real Redis with a private key prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

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


@pytest.fixture(scope="session")
def bundle_root(small_retail_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle trained once per session by the real pipeline on the small simulated retailer."""
    from omnirec.training.config import TrainConfig
    from omnirec.training.pipeline import train

    root = tmp_path_factory.mktemp("models")
    train(small_retail_dir, TrainConfig(bundle_root=root), force=True, progress=False)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"{SHARED_DATA} is missing: the repository expects ../shared beside it")
    return SHARED_DATA


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """The real Redis server (CI starts one); each test gets its own prefix in `client.test_prefix`."""
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=5)
    client.ping()
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    client.test_prefix = prefix  # type: ignore[attr-defined]
    yield client
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> str:
    return redis_client.test_prefix  # type: ignore[attr-defined,no-any-return]
