"""Collaborative matrix factorisation through `implicit`: ALS (default) and BPR.

BLAS is limited to one thread around construction and fit: `implicit` runs its own thread pool, and a
multi-threaded BLAS underneath it oversubscribes the cores and slows ALS down by an order of magnitude.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from threadpoolctl import threadpool_limits

from omnirec.training.models.base import Recommender, TrainSet


class FactorizationRecommender(Recommender):
    """Member and item factors whose inner product is the score, however they were fitted (`implicit` here,
    Spark MLlib in `training.spark`)."""

    member_factors: np.ndarray
    item_factors: np.ndarray

    def scores(self, member_idx: np.ndarray) -> np.ndarray:
        return self.member_factors[member_idx] @ self.item_factors.T


class ImplicitRecommender(FactorizationRecommender):
    """Factors fitted in this process by an `implicit` model, which subclasses pick."""

    def __init__(self, seed: int = 0, **params: Any) -> None:
        self.seed = seed
        self.params = params

    @abstractmethod
    def _model(self) -> AlternatingLeastSquares | BayesianPersonalizedRanking:
        """A fresh, unfitted `implicit` model built from `self.params`."""

    def fit(self, data: TrainSet) -> None:
        with threadpool_limits(1, "blas"):
            model = self._model()
            model.fit(data.matrix, show_progress=False)
        self.member_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)


class ALSRecommender(ImplicitRecommender):
    """Implicit-feedback ALS (Hu, Koren, Volinsky 2008): confidence 1 + alpha * matrix value."""

    name = "als"

    def _model(self) -> AlternatingLeastSquares:
        return AlternatingLeastSquares(random_state=self.seed, **self.params)


class BPRRecommender(ImplicitRecommender):
    """Bayesian personalised ranking: pairwise, ignores confidence values (any positive counts once)."""

    name = "bpr"

    def _model(self) -> BayesianPersonalizedRanking:
        return BayesianPersonalizedRanking(random_state=self.seed, **self.params)
