"""The Spark engine: the same weights as the local engine, MLlib ALS in the real pipeline, the same bundle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from omnirec.bundle import Array
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.readers import IDENTITY_FILE, RetailData
from omnirec.domain.vocab import Col
from omnirec.service.bundles import load_serving_model
from omnirec.spark.config import SparkConfig
from omnirec.training.config import TrainConfig
from omnirec.training.pipeline import TrainResult, train
from omnirec.training.spark import ITEM_IDX, MEMBER_IDX, confidences, weight_column
from omnirec.training.split import time_split
from omnirec.training.weighting import WeightRules, confidence_matrix, event_weights
from tests.conftest import SMALL_RANKER

pytestmark = pytest.mark.timeout(900)  # Spark jobs: seconds each on a quiet machine, minutes on a busy one
CONFIG = TrainConfig(channel_weights={"app": 1.0, "mini_program": 0.8, "web": 0.6, "pos": 1.5, "store": 0.0},
                     half_life_days=30.0)

SMALL_ALS = {"factors": 16, "regularization": 2.0, "alpha": 3.0, "iterations": 6}


def _events(spark: SparkSession, retail: RetailData) -> tuple[object, object]:
    interactions = retail.interactions()
    table = interactions.events.select([Col.EVENT_TYPE, Col.CHANNEL, Col.TS]).append_column(
        MEMBER_IDX, pa.array(interactions.member_idx)).append_column(ITEM_IDX, pa.array(interactions.item_idx))
    table = table.append_column("row", pa.array(np.arange(table.num_rows)))
    return interactions, spark.createDataFrame(table)


def test_both_engines_weigh_every_event_alike(spark: SparkSession, small_retail_dir: Path) -> None:
    interactions, events = _events(spark, RetailData.read(small_retail_dir))
    now = time_split(interactions, CONFIG.test_days).cutoff_ts
    local = event_weights(interactions, CONFIG, now_ts=now)
    rows = events.select("row", weight_column(WeightRules.of(CONFIG), now).alias("w")).orderBy("row").toArrow()
    assert len(np.unique(local)) > 50  # decay, channels and returns all vary the weight
    np.testing.assert_allclose(rows["w"].to_numpy(), local, rtol=1e-12, atol=0)

    train = interactions.events[Col.TS].to_numpy() <= now
    want = confidence_matrix(interactions.member_idx[train], interactions.item_idx[train], local[train],
                             (len(interactions.members), len(interactions.items)))
    got = confidences(events, WeightRules.of(CONFIG), now).toArrow()
    assert got.num_rows == want.nnz
    coo = want.tocoo()
    order = np.lexsort((coo.col, coo.row))
    spark_order = np.lexsort((got[ITEM_IDX].to_numpy(), got[MEMBER_IDX].to_numpy()))
    np.testing.assert_array_equal(got[MEMBER_IDX].to_numpy()[spark_order], coo.row[order])
    np.testing.assert_array_equal(got[ITEM_IDX].to_numpy()[spark_order], coo.col[order])
    np.testing.assert_allclose(got["confidence"].to_numpy()[spark_order], coo.data[order], rtol=1e-6)


@pytest.fixture(scope="module")
def spark_trained(spark: SparkSession, small_retail_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> TrainResult:
    config = TrainConfig(bundle_root=tmp_path_factory.mktemp("spark-bundles"), engine="spark", seed=3,
                         als=SMALL_ALS, refit_full=False, ranker=SMALL_RANKER)  # small fits keep the suite quick
    return train(small_retail_dir, config, publish=False, progress=False)


def test_spark_engine_writes_the_bundle_the_service_loads(spark_trained: TrainResult, small_retail_dir: Path) -> None:
    bundle = load_serving_model(spark_trained.path, small_retail_dir).bundle
    assert bundle.manifest.params["engine"] == "spark"
    factors = np.asarray(bundle.arrays[Array.MEMBER_FACTORS])
    assert factors.shape == (len(bundle.members), SMALL_ALS["factors"])
    interactions = RetailData.read(small_retail_dir).interactions()
    split = time_split(interactions, TrainConfig().test_days)
    train_rows = interactions.events[Col.TS].to_numpy() <= split.cutoff_ts
    weights = event_weights(interactions, TrainConfig(), now_ts=split.cutoff_ts)
    pairs = confidence_matrix(interactions.member_idx[train_rows], interactions.item_idx[train_rows],
                              weights[train_rows], (len(interactions.members), len(interactions.items)))
    has_pairs = np.diff(pairs.indptr) > 0
    np.testing.assert_array_equal(np.abs(factors).sum(1) > 0, has_pairs)  # a vector for every member with events
    als, popularity = spark_trained.metrics["als"], spark_trained.metrics["popularity"]
    assert als["ndcg@10"] > popularity["ndcg@10"] and spark_trained.beats_popularity


def test_spark_engine_refuses_what_it_cannot_do(small_retail_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="train.collaborative"):
        train(small_retail_dir, TrainConfig(bundle_root=tmp_path, engine="spark", collaborative="bpr"),
              progress=False)


def test_spark_reads_any_spark_uri_of_the_log(spark: SparkSession, small_retail_dir: Path) -> None:
    """`events_uri` takes whatever Spark reads (here a file:// URI); linked anonymous events get their member."""
    from omnirec.spark.session import event_paths, read_events

    paths = event_paths(SparkConfig(), small_retail_dir)
    rows = pq.read_metadata(paths[0]).num_rows
    plain = read_events(spark, paths, None)
    credited = read_events(spark, [Path(paths[0]).as_uri()], str(small_retail_dir / IDENTITY_FILE))
    assert plain.count() == credited.count() == rows
    anonymous = F.col(Col.MEMBER_ID).isNull()
    assert 0 < credited.where(anonymous).count() < plain.where(anonymous).count()


def test_omnirec_imports_and_runs_locally_without_pyspark() -> None:
    code = ("import sys; sys.modules['pyspark'] = None\n"
            "import omnirec.cli, omnirec.training.pipeline, omnirec.service.server\n"
            "from omnirec.training.config import TrainConfig\n"
            "from omnirec.training.pipeline import engine_model\n"
            "from omnirec.domain.errors import InvalidArgument\n"
            "try:\n"
            "    engine_model(TrainConfig(engine='spark'), __import__('pathlib').Path('.'), None)\n"
            "except InvalidArgument as exc:\n"
            "    print('refused:', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "refused" in out and "pip install 'omnirec[spark]'" in out
