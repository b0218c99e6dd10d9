"""End-to-end job: bad input gives a clear error naming the field; the bundle gets published."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omnirec.bundle import BundleRegistry
from omnirec.domain.errors import DataError, FailedPrecondition, InvalidArgument
from omnirec.training.config import TrainConfig
from omnirec.training.pipeline import TrainResult, next_basket_table, summary_table, train
from omnirec.training.publish import publish_version
from tests.conftest import SMALL_RANKER


def copy_with_events(src: Path, dest: Path, events: pa.Table) -> Path:
    shutil.copytree(src, dest)
    pq.write_table(events, dest / "events.parquet")
    return dest


def test_publish_gate_compares_the_served_list_with_the_strongest_baseline(trained: TrainResult,
                                                                           train_config: TrainConfig) -> None:
    """On the 1,000-member retailer (simulated tastes, no repeat cycles) the served two-stage MIXED list does not
    clear LightFM (158 test members): the gate refuses, `omnirec publish` refuses without --force, and the
    manifest says why."""
    rows = {r.method: r for r in trained.next_basket}
    served = {"omnirec", "omnirec-buy-again", "omnirec-discover"}
    assert served | {"ALS", "G-TopFreq", "P-TopFreq", "GP-TopFreq", "TIFU-KNN", "LightFM"} <= set(rows)
    assert rows["omnirec"].n_members > 100
    gate = trained.gate
    assert gate is not None and gate.served == "omnirec" and not gate.passed and not trained.published
    strongest = max((r for r in trained.next_basket if r.method not in served), key=lambda r: r.means["ndcg@10"])
    assert gate.checks["ndcg@10"]["rival"] == strongest.method
    assert rows["omnirec"].means["ndcg@10"] < strongest.means["ndcg@10"]
    manifest = json.loads((trained.path / "manifest.json").read_text())
    assert manifest["gate_passed"] is False and manifest["next_basket"]["gate"]["passed"] is False
    registry = BundleRegistry(train_config.bundle_root)
    assert registry.current_path() is None
    with pytest.raises(FailedPrecondition, match="next_basket"):
        publish_version(train_config.bundle_root, trained.version)
    assert publish_version(train_config.bundle_root, trained.version, force=True) == trained.version
    assert registry.current_path() == trained.path
    assert "popularity" in summary_table(trained).title and "gate" in next_basket_table(trained).title


def test_popularity_gate_is_still_available(small_retail_dir: Path, tmp_path: Path) -> None:
    result = train(small_retail_dir, TrainConfig(bundle_root=tmp_path, seed=3, publish_gate="popularity",
                                                 lightfm={"epochs": 2}, ranker=SMALL_RANKER), progress=False)
    assert result.gate is None and result.published == result.beats_popularity


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


def test_a_history_too_short_for_the_ranker_trains_without_intent_lists(small_retail_dir: Path,
                                                                        tmp_path: Path) -> None:
    """16 days of events leave the next-basket split its 14-day test window but no ranker window before it:
    training still publishes (whatever the service accepted must train), the bundle holds no intent lists,
    so the service answers MIXED from ALS, and that list is the `omnirec` row the gate judges."""
    events = pq.read_table(small_retail_dir / "events.parquet")
    ts = events.column("ts").to_numpy()
    recent = events.filter(pa.array(ts >= ts.max() - 16 * 86_400))
    data = copy_with_events(small_retail_dir, tmp_path / "d", recent)
    result = train(data, TrainConfig(bundle_root=tmp_path / "b", lightfm={"epochs": 2}, ranker=SMALL_RANKER),
                   force=True, progress=False)
    rows = {r.method: r for r in result.next_basket}
    assert "omnirec" in rows and "omnirec-buy-again" not in rows and "omnirec-discover" not in rows
    assert result.gate is not None and result.gate.served == "omnirec"
    assert not list(result.path.glob("intent_*.npy"))
    assert json.loads((result.path / "manifest.json").read_text())["lists_as_of"] == ""


def test_without_refit_the_ranker_is_compiled_once_for_the_evaluation_and_every_member(small_retail_dir: Path,
                                                                                       tmp_path: Path) -> None:
    """Where every member's lists will be scored by the compiled rankers anyway, the evaluation's lists use
    them too: the same rows and lists as LightGBM's own predict."""
    import numpy as np

    from omnirec.bundle import ModelBundle
    from omnirec.bundle.format import INTENT_ARRAYS

    runs = [train(small_retail_dir, TrainConfig(bundle_root=tmp_path / str(n), seed=3, refit_full=False,
                                                lightfm={"epochs": 2}, ranker={**SMALL_RANKER, "compile_members": n}),
                  progress=False, force=True) for n in (1, 10**9)]
    assert "compile_ranker" in runs[0].seconds and "compile_ranker" not in runs[1].seconds
    for a, b in zip(runs[0].next_basket, runs[1].next_basket, strict=True):
        assert a.method == b.method and a.means == pytest.approx(b.means)
    bundles = [ModelBundle.load(r.path) for r in runs]
    for items, _ in INTENT_ARRAYS.values():
        assert np.array_equal(bundles[0].arrays[items], bundles[1].arrays[items])
