"""A bundle trained once per session on the small simulated retailer, shared read-only by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnirec.training.config import TrainConfig
from omnirec.training.pipeline import TrainResult, train
from tests.conftest import SMALL_RANKER


@pytest.fixture(scope="session")
def train_config(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    return TrainConfig(bundle_root=tmp_path_factory.mktemp("bundles"), seed=3, ranker=SMALL_RANKER)


@pytest.fixture(scope="session")
def trained(small_retail_dir: Path, train_config: TrainConfig) -> TrainResult:
    return train(small_retail_dir, train_config, progress=False)
