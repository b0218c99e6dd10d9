"""`TrainConfig`: every knob of `omnirec train` in one validated object (the `[train]` config section).

Weights are plain numbers so a retailer can retune them in TOML; model hyperparameters stay plain keyword
dictionaries handed to the model constructors, so a new `implicit` or `lightfm` option needs no code change.
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
    collaborative: Literal["als", "bpr"] = "als"
    als: dict[str, Any] = Field(default_factory=lambda: {
        "factors": 32, "regularization": 2.0, "alpha": 3.0, "iterations": 15})
    bpr: dict[str, Any] = Field(default_factory=lambda: {
        "factors": 64, "learning_rate": 0.05, "regularization": 0.01, "iterations": 100, "num_threads": 1})
    lightfm: dict[str, Any] = Field(default_factory=lambda: {
        "no_components": 32, "loss": "warp", "learning_rate": 0.08, "epochs": 30, "num_threads": 1})
    """`epochs` and `num_threads` go to `fit`, the rest to `LightFM()`; one thread keeps runs reproducible."""
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

    @field_validator("event_weights")
    @classmethod
    def _event_weights(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_weights("event_weights", value, {e.value for e in EventType} - {EventType.RETURN.value})

    @field_validator("channel_weights")
    @classmethod
    def _channel_weights(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_weights("channel_weights", value, {c.value for c in Channel})
