"""End-to-end job: bad input gives a clear error naming the field; the bundle gets published."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omnirec.bundle import BundleRegistry
from omnirec.domain.errors import DataError, InvalidArgument
from omnirec.training.config import TrainConfig
from omnirec.training.pipeline import TrainResult, summary_table, train


def copy_with_events(src: Path, dest: Path, events: pa.Table) -> Path:
    shutil.copytree(src, dest)
    pq.write_table(events, dest / "events.parquet")
    return dest


def test_trained_bundle_is_published(trained: TrainResult, train_config: TrainConfig) -> None:
    assert trained.published
    assert BundleRegistry(train_config.bundle_root).current_path() == trained.path
    assert "popularity" in summary_table(trained).title


def test_unknown_column_names_the_field(small_retail_dir: Path, tmp_path: Path) -> None:
    events = pq.read_table(small_retail_dir / "events.parquet")
    data = copy_with_events(small_retail_dir, tmp_path / "d", events.append_column("colour", pa.nulls(
        events.num_rows, pa.string())))
    with pytest.raises(DataError, match="colour"):
        train(data, TrainConfig(bundle_root=tmp_path / "b"), progress=False)


def test_empty_log_is_refused(small_retail_dir: Path, tmp_path: Path) -> None:
    events = pq.read_table(small_retail_dir / "events.parquet").slice(0, 0)
    data = copy_with_events(small_retail_dir, tmp_path / "d", events)
    with pytest.raises(InvalidArgument, match="events"):
        train(data, TrainConfig(bundle_root=tmp_path / "b"), progress=False)
