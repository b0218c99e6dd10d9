"""LightFM hybrid: members and items are sums of identity and side-feature embeddings (Kula 2015).

Feature embeddings give new members (profile only) and new items (metadata only) a place in the same
space, which is what the bundle's cold-start scores and content item vectors are made of.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM

from omnirec.training.features import FeatureMatrix
from omnirec.training.models.base import Recommender, TrainSet


def with_identity(features: FeatureMatrix | None, n_rows: int) -> sp.csr_matrix:
    """Identity columns first, then side features; rows scaled to sum to 1 as LightFM's docs advise."""
    blocks = [sp.identity(n_rows, dtype=np.float32, format="csr")]
    if features is not None:
        blocks.append(features.matrix.astype(np.float32))
    matrix = sp.hstack(blocks, format="csr")
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(sums, 1e-12)) @ matrix, dtype=np.float32)


class LightFMRecommender(Recommender):
    """WARP-trained LightFM with identity plus member and item features."""

    name = "lightfm"

    def __init__(self, seed: int = 0, epochs: int = 15, num_threads: int = 1, max_members: int | None = None,
                 **params: Any) -> None:
        self.seed = seed
        self.epochs = epochs
        self.num_threads = num_threads
        self.max_members = max_members
        self.params = params

    def fit(self, data: TrainSet) -> None:
        n_members, n_items = data.matrix.shape
        self.member_features = data.member_features
        self.item_features = data.item_features
        self._member_x = with_identity(data.member_features, n_members)
        item_x = with_identity(data.item_features, n_items)
        self.model = LightFM(random_state=self.seed, **self.params)
        matrix = self._sample(data.matrix)
        self.fitted_members = int((np.diff(matrix.indptr) > 0).sum())
        interactions = matrix.tocoo()
        self.model.fit(interactions, user_features=self._member_x, item_features=item_x,
                       sample_weight=interactions, epochs=self.epochs, num_threads=self.num_threads)
        self.item_bias, self.item_vectors = self.model.get_item_representations(item_x)
        self.item_bias = self.item_bias.astype(np.float32)
        self.item_vectors = self.item_vectors.astype(np.float32)
        self.similarity_vectors = self._similarity_vectors(item_x, np.diff(matrix.tocsc().indptr) > 0)

    def _sample(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """The rows of at most `max_members` members with interactions (seeded), the others emptied: their
        identity embeddings stay untrained, so they are scored mostly by their profile features, as a cold
        member is."""
        active = np.flatnonzero(np.diff(matrix.indptr) > 0)
        if self.max_members is None or len(active) <= self.max_members:
            return matrix
        keep = np.zeros(matrix.shape[0], np.float32)
        keep[np.random.default_rng(self.seed).choice(active, self.max_members, replace=False)] = 1.0
        sampled = sp.csr_matrix(sp.diags(keep) @ matrix)
        sampled.eliminate_zeros()
        return sampled

    def _similarity_vectors(self, item_x: sp.csr_matrix, warm: np.ndarray) -> np.ndarray:
        """[metadata part | identity part] per item, identity zeroed for items without interactions.

        A cold item's identity embedding is untrained noise; summed into its vector (as scoring does) it
        hides the metadata, so similarity uses the parts side by side: cold-warm pairs compare on
        metadata alone, warm-warm pairs on both.
        """
        n_items = len(warm)
        embeddings = self.model.item_embeddings
        identity = np.asarray(item_x[:, :n_items] @ embeddings[:n_items], dtype=np.float32)
        identity[~warm] = 0.0
        metadata = np.asarray(item_x[:, n_items:] @ embeddings[n_items:], dtype=np.float32)
        return np.hstack([metadata, identity])

    def member_vectors(self, member_idx: np.ndarray) -> np.ndarray:
        """Learned member representations (identity + profile features) for known members."""
        return (self._member_x[member_idx] @ self.model.user_embeddings).astype(np.float32)

    def feature_embeddings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(names, embeddings, biases) of the member side features: all a cold-start score needs."""
        n_members = self._member_x.shape[0]
        names = self.member_features.names if self.member_features is not None else np.zeros(0, str)
        return (names, self.model.user_embeddings[n_members:].astype(np.float32),
                self.model.user_biases[n_members:].astype(np.float32))

    def scores(self, member_idx: np.ndarray) -> np.ndarray:
        return self.member_vectors(member_idx) @ self.item_vectors.T + self.item_bias
