"""Turn an event log into the member x item confidence matrix every collaborative model trains on.

One event's weight = event-type weight x channel weight x recency decay; returns subtract their item's
confidence, and a member-item pair whose sum ends at or below zero is dropped (a returned purchase is not a
preference). Weights are checked here as well as in the config, because callers may pass arrays directly.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from omnirec.domain.clock import DAY
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.readers import Interactions
from omnirec.domain.vocab import Col, EventType
from omnirec.training.columns import lookup
from omnirec.training.config import TrainConfig
from omnirec.training.models.base import TrainSet


def _lookup_weights(column: pa.ChunkedArray, table: dict[str, float], field: str) -> np.ndarray:
    """Per-row weight from a small vocabulary; values missing from `table` weigh 0."""
    bad = [k for k, v in table.items() if not np.isfinite(v)]
    if bad:
        raise InvalidArgument(f"{field}.{bad[0]}", "weight is not a finite number")
    return lookup(column, table)


def event_weights(interactions: Interactions, config: TrainConfig, now_ts: int | None = None) -> np.ndarray:
    """Signed weight of every interaction row: positive for intent, negative for returns, 0 for ignored types.

    `now_ts` anchors the recency decay; it defaults to the newest event so retraining on the same log
    gives the same matrix whatever the wall clock says.
    """
    events = interactions.events
    if events.num_rows == 0:
        raise InvalidArgument("events", "the event log has no member-item events to train on")
    signed = dict(config.event_weights)
    signed[EventType.RETURN.value] = -config.return_weight
    weights = _lookup_weights(events[Col.EVENT_TYPE], signed, "event_weights")
    weights *= _lookup_weights(events[Col.CHANNEL], config.channel_weights, "channel_weights")
    if config.half_life_days is not None:
        ts = events[Col.TS].to_numpy().astype(np.float64)
        now = float(ts.max()) if now_ts is None else float(now_ts)
        weights *= np.exp2(-np.maximum(now - ts, 0.0) / (config.half_life_days * DAY))
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
    matrix.data[matrix.data < 1e-9] = 0.0
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
