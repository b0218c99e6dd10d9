"""The Spark engine of `omnirec train`: the event log read, weighted and aggregated by Spark, and the
collaborative model fitted by Spark MLlib's ALS (blocked, distributed; implicit preferences).

Only this module imports `pyspark` (the optional extra `spark`), and only when `[train] engine = "spark"`:
`make run` and the service never need Java. Weights come from the same `WeightRules` as the local
engine, applied as Spark columns (`weight_column`), so both engines weigh every event alike.

What runs where: reading the log, identity crediting, weighting, the member x item sums and the ALS fit
(the stages that grow with events and members) run on Spark. The factors come back to the driver,
which evaluates them on the same time split and writes the same bundle as the local engine; the
LightFM hybrid, popularity tables, basket complements and the FAISS indexes stay single-machine (they
learn from the item side or need the whole catalogue in one process; see docs/scale.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.ml.recommendation import ALS
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from omnirec.domain.readers import IDENTITY_FILE, Interactions
from omnirec.domain.vocab import Col
from omnirec.spark.config import SparkConfig
from omnirec.spark.session import event_paths, read_events, session
from omnirec.training.als_objective import SparkALSParams, spark_params
from omnirec.training.config import ALSSettings, TrainConfig
from omnirec.training.models.base import TrainSet
from omnirec.training.models.factorization import FactorizationRecommender
from omnirec.training.weighting import MIN_CONFIDENCE, WeightRules

log = logging.getLogger(__name__)
MEMBER_IDX, ITEM_IDX, WEIGHT, CONFIDENCE = "member_idx", "item_idx", "weight", "confidence"


def indexed(spark: SparkSession, events: DataFrame, interactions: Interactions) -> DataFrame:
    """`events` with the driver's member and item indexes (the bundle's order), so factors line up.
    Ids missing from the catalogue are an error, as in the local engine: dropping them would lose data."""
    members = spark.createDataFrame(pa.table({Col.MEMBER_ID: pa.array(interactions.members.external_ids),
                                              MEMBER_IDX: np.arange(len(interactions.members), dtype=np.int32)}))
    items = spark.createDataFrame(pa.table({Col.ITEM_ID: pa.array(interactions.items.external_ids),
                                            ITEM_IDX: np.arange(len(interactions.items), dtype=np.int32)}))
    out = events.join(members, Col.MEMBER_ID, "left").join(items, Col.ITEM_ID, "left")
    stranger = out.where(F.col(MEMBER_IDX).isNull() | F.col(ITEM_IDX).isNull()).select(
        Col.MEMBER_ID, Col.ITEM_ID).first()
    if stranger is not None:
        raise ValueError(f"event log: member {stranger[0]!r} / item {stranger[1]!r} is not in the catalogue")
    return out.select(MEMBER_IDX, ITEM_IDX, Col.EVENT_TYPE, Col.CHANNEL, Col.TS)


def _lookup(column: str, table: dict[str, float]) -> Column:
    pairs = [F.lit(x) for kv in sorted(table.items()) for x in kv]
    return F.coalesce(F.create_map(*pairs)[F.col(column)], F.lit(0.0)) if pairs else F.lit(0.0)


def weight_column(rules: WeightRules, now_ts: int) -> Column:
    """`weighting.event_weights` as a Spark column: type weight x channel weight x 2^(-age / half-life)."""
    weight = _lookup(Col.EVENT_TYPE, rules.event_type) * _lookup(Col.CHANNEL, rules.channel)
    if rules.half_life_s is not None:
        age = F.greatest(F.lit(float(now_ts)) - F.col(Col.TS).cast("double"), F.lit(0.0))
        weight = weight * F.pow(F.lit(2.0), -age / F.lit(rules.half_life_s))
    return weight


def confidences(events: DataFrame, rules: WeightRules, now_ts: int) -> DataFrame:
    """`weighting.confidence_matrix` as a Spark job: signed weights of events up to `now_ts` summed per
    member-item pair, pairs under `MIN_CONFIDENCE` dropped, the rest log1p-scaled (when configured)."""
    summed = (events.where(F.col(Col.TS) <= now_ts).withColumn(WEIGHT, weight_column(rules, now_ts))
              .groupBy(MEMBER_IDX, ITEM_IDX).agg(F.sum(WEIGHT).alias(CONFIDENCE))
              .where(F.col(CONFIDENCE) >= MIN_CONFIDENCE))
    return summed.withColumn(CONFIDENCE, F.log1p(CONFIDENCE)) if rules.log_scale else summed


def _factors(frame: DataFrame, n: int, rank: int) -> np.ndarray:
    """MLlib's (id, features) factor table as a dense (n, rank) array; ids without events get zeros."""
    table = frame.toArrow()
    out = np.zeros((n, rank), np.float32)
    if table.num_rows:
        ids = table["id"].to_numpy()
        out[ids] = np.asarray(table["features"].combine_chunks().flatten(), np.float32).reshape(-1, rank)
    return out


class SparkALSRecommender(FactorizationRecommender):
    """`pyspark.ml.recommendation.ALS` with implicit preferences on the confidences Spark computes from
    the event log, with `[train.als]` mapped onto MLlib's parameters by `training.als_objective` (the same
    objective `implicit` fits locally; regParam depends on the pair and row counts, so it is set at fit)."""

    name = "als"

    def __init__(self, spark: SparkSession, events: DataFrame, rules: WeightRules, seed: int = 0,
                 **settings: Any) -> None:
        self.spark, self.events, self.rules = spark, events, rules
        self.settings = ALSSettings(**settings)
        self.seed = seed
        self.params: SparkALSParams | None = None
        """What the last fit gave MLlib."""

    def fit(self, data: TrainSet) -> None:
        """Fit on the events of `data` (those up to its `now_ts`), weighted by Spark; `data.matrix` is
        only read for its shape, the catalogue sizes."""
        if data.now_ts is None:
            raise ValueError("SparkALSRecommender needs TrainSet.now_ts, the newest event it may learn from")
        n_members, n_items = data.matrix.shape
        pairs = confidences(self.events, self.rules, data.now_ts).cache()
        counts = pairs.agg(F.count(F.lit(1)), F.countDistinct(MEMBER_IDX), F.countDistinct(ITEM_IDX)).first()
        self.params = spark_params(self.settings, pairs=counts[0], members=counts[1], items=counts[2])
        blocks = self.spark.sparkContext.defaultParallelism
        als = ALS(rank=self.params.rank, alpha=self.params.alpha, regParam=self.params.reg_param,
                  maxIter=self.params.max_iter, implicitPrefs=True, seed=self.seed,
                  numUserBlocks=blocks, numItemBlocks=blocks, userCol=MEMBER_IDX, itemCol=ITEM_IDX,
                  ratingCol=CONFIDENCE)
        model = als.fit(pairs)
        pairs.unpersist()
        self.member_factors = _factors(model.userFactors, n_members, self.params.rank)
        self.item_factors = _factors(model.itemFactors, n_items, self.params.rank)


def spark_als(config: TrainConfig, spark_config: SparkConfig, data_dir: Path,
              interactions: Interactions) -> SparkALSRecommender:
    """The collaborative model of `--engine spark`, reading the event log at `spark_config.events_uri`
    (default: the data dir's files) in the session `session(spark_config)`."""
    spark = session(spark_config)
    paths = event_paths(spark_config, data_dir)
    links = data_dir / IDENTITY_FILE
    member_item = read_events(spark, paths, str(links) if links.exists() else None).where(
        F.col(Col.MEMBER_ID).isNotNull() & F.col(Col.ITEM_ID).isNotNull())
    events = indexed(spark, member_item, interactions)
    log.info("spark: training ALS on %s (master %s)", ", ".join(paths), spark.sparkContext.master)
    return SparkALSRecommender(spark, events.cache(), WeightRules.of(config), seed=config.seed,
                               **config.als.kwargs())
