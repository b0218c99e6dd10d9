"""`TrainConfig`: every knob of `omnirec train` in one validated object (the `[train]` config section).

Weights are plain numbers so a retailer can retune them in TOML. Each model's hyperparameters are a typed
section with a default per key, so `[train.lightfm] epochs = 5` changes the epochs and keeps every other
default, and a misspelt key is an error that names it; the models receive them as keyword arguments.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from omnirec.domain.errors import InvalidArgument
from omnirec.domain.vocab import Channel, EventType

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    EventType.PURCHASE.value: 5.0,
    EventType.ADD_TO_CART.value: 3.0,
    EventType.WISHLIST.value: 2.0,
    EventType.VIEW.value: 1.0,
    EventType.COUPON_REDEEM.value: 2.0,
}
"""Confidence per event type: stronger intent counts more (purchase > add_to_cart > wishlist > view)."""

DEFAULT_CHANNEL_WEIGHTS: dict[str, float] = {c.value: 1.0 for c in Channel}


def _check_weights(field: str, weights: dict[str, float], allowed: set[str]) -> dict[str, float]:
    for key, value in weights.items():
        if key not in allowed:
            raise InvalidArgument(f"{field}.{key}", f"unknown key; expected some of {sorted(allowed)}")
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"{field}.{key}", f"weight must be a finite number >= 0 (got {value!r})")
    return weights


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments for the model's constructor."""
        return self.model_dump()


class ALSSettings(_Section):
    """`implicit` AlternatingLeastSquares."""

    factors: int = Field(32, ge=1)
    regularization: float = Field(2.0, ge=0)
    alpha: float = Field(3.0, gt=0, description="confidence = 1 + alpha * matrix value")
    iterations: int = Field(15, ge=1)


class BPRSettings(_Section):
    """`implicit` BayesianPersonalizedRanking."""

    factors: int = Field(64, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    regularization: float = Field(0.01, ge=0)
    iterations: int = Field(100, ge=1)
    num_threads: int = Field(1, ge=0, description="0: every core; 1 keeps runs reproducible")


class LightFMSettings(_Section):
    """LightFM; `epochs` and `num_threads` go to `fit`, the rest to `LightFM()`."""

    no_components: int = Field(32, ge=1)
    loss: Literal["warp", "bpr", "warp-kos", "logistic"] = "warp"
    learning_rate: float = Field(0.08, gt=0)
    item_alpha: float = Field(0.0, ge=0, description="L2 penalty on item features")
    user_alpha: float = Field(0.0, ge=0, description="L2 penalty on member features")
    epochs: int = Field(30, ge=1)
    num_threads: int = Field(1, ge=1, description="1 keeps runs reproducible")
    max_members: int | None = Field(None, ge=1, description="fit on the interactions of at most this many "
                                                            "members (a seeded sample; None: all): LightFM "
                                                            "serves cold members and items, whose feature "
                                                            "embeddings a sample learns, and its time grows "
                                                            "with the interactions it sees")


class RankerSettings(_Section):
    """The two-stage next-basket ranker (`training.ranker`): candidates per source, the windows it learns
    from, LightGBM, and the depth of the intent lists written to the bundle. The caps bound time and memory
    at a million members; their defaults leave Complete Journey (2,500 households) uncapped."""

    personal: int = Field(60, ge=0, description="the member's own items by time-decayed frequency")
    knn: int = Field(30, ge=0, description="items of the member's TIFU-KNN neighbours")
    als: int = Field(30, ge=0)
    lift: int = Field(20, ge=0, description="items bought with the member's last basket")
    store: int = Field(15, ge=0, description="the member's main store's bestsellers")
    overall: int = Field(15, ge=0, description="the chain's recent bestsellers")
    min_item_baskets: int = Field(10, ge=1, description="items in fewer baskets are candidates only for members "
                                                        "who bought them")
    max_pool_items: int = Field(20_000, ge=1, description="at most this many (most popular) items are candidates "
                                                          "for members who never bought them")
    knn_pool: int = Field(5_000, ge=1, description="neighbours are searched among this many sampled members "
                                                  "(the distance to each is computed for every member scored)")
    windows: int = Field(3, ge=1, description="training windows shifted back from the cut-off")
    window_days: int = Field(14, ge=1)
    train_members: int = Field(20_000, ge=1, description="members sampled per training window")
    n_estimators: int = Field(300, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, ge=2)
    n_jobs: int = Field(1, ge=1, description="LightGBM threads; more than one is 10-20x slower, not faster, on a "
                                             "machine other jobs keep busy (OpenMP threads spin-wait)")
    batch: int = Field(256, ge=1, description="members whose candidates are built and scored at once")
    processes: int = Field(2, ge=1, description="forked processes scoring the members' intent lists (they share "
                                                "the parent's context); 1 scores in the training process")
    compile_members: int = Field(100_000, ge=1, description="scoring at least this many members compiles the "
                                                            "rankers with lleaves first (same scores, ~1/6 of the "
                                                            "predict CPU, ~40 CPU-s to compile each of the two)")
    list_depth: int = Field(50, ge=1, description="items per member and intent written to the bundle")
    promotions: bool = Field(True, description="promotion features from the data directory's promotions "
                                               "table, where it has one (`training.promotions`)")
    promotion_days: int = Field(7, ge=1, description="promotions running in this many days after a cut-off are "
                                                     "the ones the ranker reads (a retailer plans them ahead)")


class TrainConfig(BaseModel):
    """Weighting, split, model hyperparameters, index thresholds and where bundles go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle_root: Path = Path("var/models")
    """Folder holding the versioned bundles and the `current` pointer."""
    seed: int = 0
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    """Event types missing here (store_visit, return) add no confidence; returns subtract, see below."""
    channel_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_CHANNEL_WEIGHTS))
    half_life_days: float | None = Field(90.0, gt=0, description="recency decay; None disables it")
    return_weight: float = Field(5.0, ge=0, description="confidence a `return` takes back from its item")
    log_scale: bool = Field(True, description="use log1p of the weighted count, so heavy repeats saturate")
    test_days: int = Field(14, ge=1, description="last days of history held out for the time-based split")
    eval_k: int = Field(10, ge=1)
    eval_members: int = Field(20_000, ge=1, description="members sampled for evaluation (bounds time at scale)")
    engine: Literal["local", "spark"] = Field("local", description="what fits the collaborative ALS: `implicit` "
                                                                   "in this process, or Spark MLlib")
    collaborative: Literal["als", "bpr"] = "als"
    als: ALSSettings = ALSSettings()
    bpr: BPRSettings = BPRSettings()
    lightfm: LightFMSettings = LightFMSettings()
    ranker: RankerSettings = RankerSettings()
    eval_batch: int = Field(512, ge=1, description="members scored at once (bounds memory: batch x items floats)")
    exact_index_max_items: int = Field(50_000, ge=1, description="above this, HNSW instead of exact search")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(128, ge=1)
    member_top_k: int = Field(50, ge=0, description="items precomputed per member for serving (0: none; the "
                                                    "service then searches the member index per request)")
    index_recall_queries: int = Field(1_000, ge=1, description="queries used to measure HNSW recall")
    complements_per_item: int = Field(50, ge=1, description="top lift partners kept per item")
    complements_min_count: int = Field(2, ge=1, description="baskets two items must share to count")
    complement_blend: float = Field(0.7, ge=0, le=1, description="share of lift vs embedding similarity")
    refit_full: bool = Field(True, description="after evaluation, refit on all data before writing the bundle")
    publish_gate: Literal["next_basket", "popularity"] = Field(
        "next_basket", description="next_basket: the served MIXED list (the ranker's) must beat the strongest "
                                   "next-basket baseline (G/P/GP-TopFreq, TIFU-KNN, store popularity, ALS, "
                                   "LightFM) on recall and NDCG; "
                                   "popularity: the old rule, collaborative NDCG on never-bought items vs popularity")
    gate_margin: float = Field(0.0, ge=0, description="the 95% interval of the paired gap must clear this margin")
    gate_bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for the intervals and the gate")

    @field_validator("event_weights")
    @classmethod
    def _event_weights(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_weights("event_weights", value, {e.value for e in EventType} - {EventType.RETURN.value})

    @field_validator("channel_weights")
    @classmethod
    def _channel_weights(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_weights("channel_weights", value, {c.value for c in Channel})
