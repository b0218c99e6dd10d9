"""Collaborative matrix factorisation through `implicit`: ALS (default) and BPR.

BLAS is limited to one thread around construction and fit: `implicit` runs its own thread pool, and a
multi-threaded BLAS underneath it oversubscribes the cores and slows ALS down by an order of magnitude.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from threadpoolctl import threadpool_limits

from omnirec.training.als_objective import implicit_kwargs, implicit_matrix
from omnirec.training.config import ALSSettings
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

    def _matrix(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """What the `implicit` model is fitted on: the confidence matrix as it is, unless a subclass's
        model reads its values differently."""
        return matrix

    def fit(self, data: TrainSet) -> None:
        with threadpool_limits(1, "blas"):
            model = self._model()
            model.fit(self._matrix(data.matrix), show_progress=False)
        self.member_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)


class ALSRecommender(ImplicitRecommender):
    """Implicit-feedback ALS (Hu, Koren, Volinsky 2008) with confidence 1 + alpha * matrix value, given to
    `implicit` as `training.als_objective` maps it (the same objective Spark MLlib fits)."""

    name = "als"

    def __init__(self, seed: int = 0, **params: Any) -> None:
        super().__init__(seed, **params)
        self.settings = ALSSettings(**params)

    def _matrix(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        return implicit_matrix(matrix, self.settings)

    def _model(self) -> AlternatingLeastSquares:
        return AlternatingLeastSquares(random_state=self.seed, **implicit_kwargs(self.settings))

    def fold_in(self, data: TrainSet) -> ALSRecommender:
        """A copy whose member factors are solved on `data` with these item factors held fixed (one ALS
        half-step, a fraction of a fit): the ranker's later training windows get their ALS feature from the
        earliest window's fit instead of a fit each. `data` must hold every event the fit saw."""
        model = self._model()
        model.item_factors = self.item_factors
        matrix = self._matrix(data.matrix)
        with threadpool_limits(1, "blas"):
            members = model.recalculate_user(np.arange(matrix.shape[0]), matrix)
        out = ALSRecommender(self.seed, **self.params)
        out.member_factors = np.ascontiguousarray(members, dtype=np.float32)
        out.item_factors = self.item_factors
        return out


class BPRRecommender(ImplicitRecommender):
    """Bayesian personalised ranking: pairwise, ignores confidence values (any positive counts once)."""

    name = "bpr"

    def _model(self) -> BayesianPersonalizedRanking:
        return BayesianPersonalizedRanking(random_state=self.seed, **self.params)
