"""The `Recommender` contract every model and baseline implements, and the shared top-k routine.

Models see only `TrainSet` (matrix, events, side features); they know nothing about bundles or serving.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from omnirec.domain.readers import Interactions
from omnirec.domain.topk import top_k
from omnirec.training.features import FeatureMatrix


@dataclass(frozen=True)
class TrainSet:
    """What a model may learn from: the confidence matrix plus the rows and signed weights it came from."""

    matrix: sp.csr_matrix
    """Member x item confidences over the full catalogues."""
    interactions: Interactions
    rows: np.ndarray
    """Boolean mask of the interaction rows in this set (the train part of a split, or all)."""
    weights: np.ndarray
    """Signed weight per interaction row (all rows; use `rows` to select)."""
    member_features: FeatureMatrix | None = None
    item_features: FeatureMatrix | None = None
    now_ts: int | None = None
    """The time `weights` are anchored at: no row is newer (a split's cut-off; None: the newest event)."""


class Recommender(ABC):
    """Scores every catalogue item for given members; higher is better."""

    name: str

    @abstractmethod
    def fit(self, data: TrainSet) -> None:
        """Learn from `data`; a second call retrains from scratch."""

    @abstractmethod
    def scores(self, member_idx: np.ndarray) -> np.ndarray:
        """float32 (len(member_idx), n_items) scores."""

    def recommend(self, member_idx: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
                  batch: int = 512) -> np.ndarray:
        """Top-k item indexes per member, best first; items stored in `exclude`'s member rows are skipped."""
        out = np.empty((len(member_idx), k), dtype=np.int64)
        for start in range(0, len(member_idx), batch):
            members = member_idx[start:start + batch]
            out[start:start + len(members)] = top_k(self.scores(members), k, None if exclude is None
                                                      else exclude[members])
        return out
