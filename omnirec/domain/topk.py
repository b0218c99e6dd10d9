"""Top-k selection over score arrays, shared by training (evaluation, index recall) and serving (ranking)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def top_k(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None) -> np.ndarray:
    """Indexes of the k highest scores per row, best first; excluded (row, item) cells never appear."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    if exclude is not None and exclude.nnz:
        coo = exclude.tocoo()
        scores[coo.row, coo.col] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def top_finite(scores: np.ndarray, n: int) -> np.ndarray:
    """Indexes of the n best finite scores of one row, best first (filtered-out items are -inf)."""
    n = min(n, int(np.isfinite(scores).sum()))
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
    best = part[np.argsort(-scores[part], kind="stable")]
    return best[np.isfinite(scores[best])]
