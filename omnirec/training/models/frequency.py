"""Next-basket baselines from purchase frequencies: the ones the literature found hardest to beat.

G-TopFreq (most frequent items overall), P-TopFreq (the member's own most frequent items), GP-TopFreq
(P-TopFreq filled up with G-TopFreq), popularity in the member's main store, and TIFU-KNN (Hu et al.,
SIGIR 2020): a time-decayed item-frequency vector per member blended with the mean vector of its nearest
neighbours. See Li et al., "A Next Basket Recommendation Reality Check", TOIS 2023.

They learn from `Baskets` (history up to a cut-off) and score items for members; -inf means "not in this
method's list", so a personal method may return fewer than k items (padded with -1).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp

from omnirec.training.baskets import Baskets
from omnirec.training.models.base import Recommender, top_k

TIE = 0.5
"""Scale of overall popularity (in [0, 1)) added to whole basket counts: it breaks ties, never reorders counts."""


class BasketRecommender(ABC):
    """Learns from purchase baskets up to a cut-off; scores every item for a batch of members."""

    name: str

    @abstractmethod
    def fit(self, history: Baskets) -> BasketRecommender:
        """Learn from `history`; a second call starts again."""

    @abstractmethod
    def scores(self, members: np.ndarray) -> np.ndarray:
        """float32 (len(members), n_items); -inf for items the method would never list."""

    def recommend(self, members: np.ndarray, k: int, batch: int = 256) -> np.ndarray:
        """Top-k item indexes per member, best first, -1 where the method has fewer than k items."""
        out = np.full((len(members), k), -1, dtype=np.int64)
        for start in range(0, len(members), batch):
            scores = self.scores(members[start:start + batch])
            best = top_k(scores, k)
            best[~np.isfinite(np.take_along_axis(scores, best, axis=1))] = -1
            out[start:start + len(best), :best.shape[1]] = best
        return out


def main_column(matrix: sp.csr_matrix) -> np.ndarray:
    """Each row's column with the largest value (the lowest such column on ties), -1 for an empty row:
    scipy's `argmax(axis=1)` in one sort instead of a Python call per row (a million members)."""
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    order = np.lexsort((matrix.indices, -matrix.data, rows))
    rows = rows[order]
    first = np.ones(len(rows), bool)
    first[1:] = rows[1:] != rows[:-1]
    out = np.full(matrix.shape[0], -1, np.int64)
    out[rows[first]] = matrix.indices[order][first]
    return out


def global_counts(history: Baskets) -> np.ndarray:
    """Baskets holding each item, over all members (float32)."""
    return np.bincount(history.item, minlength=history.n_items).astype(np.float32)


def personal_rows(counts: sp.csr_matrix, members: np.ndarray, fill: np.ndarray | None) -> np.ndarray:
    """Dense member rows of `counts`; cells without a count are -inf, or `fill` when given."""
    rows = counts[members].toarray()
    base = np.full(rows.shape, -np.inf, np.float32) if fill is None else np.broadcast_to(fill, rows.shape).copy()
    return np.where(rows > 0, rows, base).astype(np.float32)


class GTopFreq(BasketRecommender):
    """The items in most baskets, the same list for everyone."""

    name = "G-TopFreq"

    def fit(self, history: Baskets) -> GTopFreq:
        self.counts = global_counts(history)
        return self

    def scores(self, members: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(members), len(self.counts))).copy()


class PTopFreq(BasketRecommender):
    """The member's own items by the number of their baskets that held them (ties: overall popularity)."""

    name = "P-TopFreq"
    fill_globally = False

    def fit(self, history: Baskets) -> PTopFreq:
        counts = global_counts(history)
        self.tie = TIE * counts / (float(counts.max()) + 1.0)
        self.counts = history.counts()
        return self

    def scores(self, members: np.ndarray) -> np.ndarray:
        personal = personal_rows(self.counts, members, None) + self.tie
        if self.fill_globally:
            personal = np.where(np.isfinite(personal), personal + 1.0, self.tie)
        return personal.astype(np.float32)


class GPTopFreq(PTopFreq):
    """P-TopFreq, filled up with G-TopFreq when the member bought fewer than k distinct items."""

    name = "GP-TopFreq"
    fill_globally = True


class StorePopularity(BasketRecommender):
    """Items in most baskets at the member's main store (where most of their baskets were), then overall."""

    name = "store-popularity"

    def fit(self, history: Baskets) -> StorePopularity:
        n_stores = max(len(history.store_names), 1)
        has = history.store >= 0
        self.table = sp.csr_matrix((np.ones(int(has.sum()), np.float32), (history.store[has], history.item[has])),
                                   shape=(n_stores, history.n_items))
        self.table.sum_duplicates()
        first = np.ones(len(history), bool)
        first[1:] = history.basket[1:] != history.basket[:-1]
        trips = sp.csr_matrix((np.ones(int((first & has).sum())), (history.member[first & has],
                                                                   history.store[first & has])),
                              shape=(history.n_members, n_stores))
        trips.sum_duplicates()
        self.main_store = main_column(trips)
        counts = global_counts(history)
        self.overall = TIE * counts / (float(counts.max()) + 1.0)
        return self

    def scores(self, members: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """Scores over every item, or over `items` only (the ranker's candidate columns)."""
        out = np.tile(self.overall if items is None else self.overall[items], (len(members), 1))
        store = self.main_store[members]
        has = store >= 0
        if has.any():
            rows = self.table[store[has]]
            out[has] += (rows if items is None else rows[:, items]).toarray()
        return out


def tifu_vectors(history: Baskets, within_decay: float, group_decay: float, n_groups: int) -> sp.csr_matrix:
    """Member x item TIFU vectors, vectorised over all baskets (the published code's grouping, without loops).

    A member's baskets (oldest first, j = 0..n-1) weigh `within_decay ** (n-1-j)`; they are cut into
    `n_groups` consecutive groups (the last `n mod n_groups` groups one basket longer), each group averaged
    and weighted `group_decay ** (n_groups-1-g)`, and the sum divided by the number of groups. With fewer
    baskets than groups each basket is a group of its own, as in the reference implementation.
    """
    basket_member = history.basket_member()
    first = np.searchsorted(basket_member, basket_member)
    n = np.bincount(basket_member, minlength=history.n_members)[basket_member]
    j = np.arange(len(basket_member)) - first
    base = n // n_groups
    few = n < n_groups
    extra = n - base * n_groups
    boundary = (n_groups - extra) * base
    safe_base = np.maximum(base, 1)
    in_short = j < boundary
    group = np.where(few, j, np.where(in_short, j // safe_base, (n_groups - extra) + (j - boundary) // (safe_base + 1)))
    size = np.where(few, 1, np.where(in_short, safe_base, safe_base + 1))
    real = np.where(few, n, n_groups)
    weight = (within_decay ** (n - 1 - j).astype(np.float64)) * (group_decay ** (n_groups - 1 - group)) / size / real
    matrix = sp.csr_matrix((weight[history.basket].astype(np.float32), (history.member, history.item)),
                           shape=(history.n_members, history.n_items))
    matrix.sum_duplicates()
    return matrix


class TIFUKNN(BasketRecommender):
    """Temporal item frequency with user KNN (Hu et al. 2020); defaults are the published Dunnhumby settings.

    Neighbours are the `n_neighbors` members with the nearest (Euclidean) TIFU vectors, the member included,
    among up to `max_pool` members with history (a seeded sample above that bounds time at scale).
    """

    name = "TIFU-KNN"

    def __init__(self, n_neighbors: int = 900, within_decay: float = 0.9, group_decay: float = 0.6,
                 n_groups: int = 3, alpha: float = 0.2, max_pool: int = 50_000, seed: int = 0) -> None:
        self.n_neighbors, self.within_decay, self.group_decay = n_neighbors, within_decay, group_decay
        self.n_groups, self.alpha, self.max_pool, self.seed = n_groups, alpha, max_pool, seed

    def fit(self, history: Baskets) -> TIFUKNN:
        self.vectors = tifu_vectors(history, self.within_decay, self.group_decay, self.n_groups)
        pool = np.flatnonzero(self.vectors.getnnz(axis=1) > 0)
        if len(pool) > self.max_pool:
            pool = np.sort(np.random.default_rng(self.seed).choice(pool, self.max_pool, replace=False))
        self.pool = self.vectors[pool]
        self.pool_norms = np.asarray(self.pool.multiply(self.pool).sum(axis=1)).ravel()
        return self

    def neighbours(self, members: np.ndarray) -> sp.csr_matrix:
        """members x pool: 1/k at each member's k nearest neighbours in the pool (`@ self.pool` averages
        their vectors)."""
        query = self.vectors[members]
        norms = np.asarray(query.multiply(query).sum(axis=1)).ravel()
        distance = norms[:, None] + self.pool_norms[None, :] - 2.0 * (query @ self.pool.T).toarray()
        k = min(self.n_neighbors, self.pool.shape[0])
        nearest = np.argpartition(distance, k - 1, axis=1)[:, :k]
        return sp.csr_matrix((np.full(nearest.size, 1.0 / k, np.float32),
                              (np.repeat(np.arange(len(members)), k), nearest.ravel())),
                             shape=(len(members), self.pool.shape[0]))

    def neighbour_mean(self, members: np.ndarray) -> sp.csr_matrix:
        """Mean TIFU vector of each member's nearest neighbours in the pool."""
        return (self.neighbours(members) @ self.pool).tocsr()

    def scores(self, members: np.ndarray) -> np.ndarray:
        blend = (self.alpha * self.vectors[members] + (1.0 - self.alpha) * self.neighbour_mean(members)).toarray()
        return np.where(blend > 0, blend, -np.inf).astype(np.float32)


class CollaborativeBaseline(BasketRecommender):
    """A fitted `Recommender` (ALS, LightFM) evaluated as it is, bought items included."""

    def __init__(self, model: Recommender, name: str | None = None) -> None:
        self.model = model
        self.name = name or {"als": "ALS", "bpr": "BPR", "lightfm": "LightFM"}.get(model.name, model.name)

    def fit(self, history: Baskets) -> CollaborativeBaseline:
        return self

    def scores(self, members: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.scores(members), dtype=np.float32)
