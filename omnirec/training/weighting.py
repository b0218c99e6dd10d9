"""Turn an event log into the member x item confidence matrix every collaborative model trains on.

One event's weight = event-type weight x channel weight x recency decay; returns subtract their item's
confidence, and a member-item pair whose sum ends at or below zero is dropped (a returned purchase is not a
preference). Weights are checked here as well as in the config, because callers may pass arrays directly.

The rules are data (`WeightRules`), applied here with numpy and by `training.spark` with Spark columns,
so both engines weigh an event the same way (`tests/training/test_spark.py` compares them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from omnirec.domain.clock import DAY
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.readers import Interactions
from omnirec.domain.vocab import Col, EventType
from omnirec.training.columns import lookup
from omnirec.training.config import TrainConfig
from omnirec.training.models.base import TrainSet

MIN_CONFIDENCE = 1e-9
"""A member-item sum below this is dropped (what a return leaves of a purchase is float noise, not a taste)."""


@dataclass(frozen=True)
class WeightRules:
    """How much one event counts: a signed weight per event type (returns negative), a weight per channel
    (types and channels missing weigh 0), and the recency half-life in seconds (None: no decay)."""

    event_type: dict[str, float]
    channel: dict[str, float]
    half_life_s: float | None
    log_scale: bool

    @classmethod
    def of(cls, config: TrainConfig) -> WeightRules:
        signed = dict(config.event_weights)
        signed[EventType.RETURN.value] = -config.return_weight
        for field, table in (("event_weights", signed), ("channel_weights", config.channel_weights)):
            bad = [k for k, v in table.items() if not np.isfinite(v)]
            if bad:
                raise InvalidArgument(f"{field}.{bad[0]}", "weight is not a finite number")
        half_life = None if config.half_life_days is None else config.half_life_days * DAY
        return cls(signed, dict(config.channel_weights), half_life, config.log_scale)


def event_weights(interactions: Interactions, config: TrainConfig, now_ts: int | None = None) -> np.ndarray:
    """Signed weight of every interaction row: positive for intent, negative for returns, 0 for ignored types.

    `now_ts` anchors the recency decay; it defaults to the newest event so retraining on the same log
    gives the same matrix whatever the wall clock says.
    """
    events = interactions.events
    if events.num_rows == 0:
        raise InvalidArgument("events", "the event log has no member-item events to train on")
    rules = WeightRules.of(config)
    weights = lookup(events[Col.EVENT_TYPE], rules.event_type) * lookup(events[Col.CHANNEL], rules.channel)
    if rules.half_life_s is not None:
        ts = events[Col.TS].to_numpy().astype(np.float64)
        now = float(ts.max()) if now_ts is None else float(now_ts)
        weights *= np.exp2(-np.maximum(now - ts, 0.0) / rules.half_life_s)
    return weights


def confidence_matrix(member_idx: np.ndarray, item_idx: np.ndarray, weights: np.ndarray, shape: tuple[int, int],
                      log_scale: bool = True) -> sp.csr_matrix:
    """Sum signed weights per member-item pair, keep positive sums, and (optionally) log-scale them.

    Each model scales confidences itself (ALS `alpha`), so the matrix carries no extra constant.

    float32 CSR with sorted indices, the layout `implicit` and `lightfm` take without copying.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) != len(member_idx) or len(weights) != len(item_idx):
        raise InvalidArgument("weights", f"expected {len(member_idx)} weights, got {len(weights)}")
    if not np.all(np.isfinite(weights)):
        row = int(np.flatnonzero(~np.isfinite(weights))[0])
        raise InvalidArgument("weights", f"weight of row {row} is not a finite number ({weights[row]!r})")
    matrix = sp.coo_matrix((weights, (member_idx, item_idx)), shape=shape).tocsr()
    matrix.sum_duplicates()
    matrix.data[matrix.data < MIN_CONFIDENCE] = 0.0
    matrix.eliminate_zeros()
    if log_scale:
        matrix.data = np.log1p(matrix.data)
    matrix.sort_indices()
    return matrix.astype(np.float32)


def interaction_matrix(interactions: Interactions, config: TrainConfig, rows: np.ndarray | None = None,
                       now_ts: int | None = None) -> sp.csr_matrix:
    """The confidence matrix over the full member and item catalogues, optionally from a subset of rows."""
    weights = event_weights(interactions, config, now_ts)
    members, items = interactions.member_idx, interactions.item_idx
    if rows is not None:
        weights, members, items = weights[rows], members[rows], items[rows]
    shape = (len(interactions.members), len(interactions.items))
    return confidence_matrix(members, items, weights, shape, config.log_scale)


def collaborative_train_set(interactions: Interactions, config: TrainConfig, cut_day: int) -> TrainSet:
    """The product's weighted confidence matrix from events up to the end of `cut_day` (no side features)."""
    cut_ts = (cut_day + 1) * DAY - 1
    rows = interactions.events[Col.TS].to_numpy() <= cut_ts
    weights = event_weights(interactions, config, now_ts=cut_ts)
    matrix = confidence_matrix(interactions.member_idx[rows], interactions.item_idx[rows], weights[rows],
                               (len(interactions.members), len(interactions.items)), config.log_scale)
    return TrainSet(matrix=matrix, interactions=interactions, rows=rows, weights=weights)
