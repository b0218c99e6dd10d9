"""Ranking metrics over top-k lists, vectorised over members (no Python loop per member).

Conventions (as in RecTools and the NCF papers): ranks start at 0, a hit at rank r gains 1/log2(r + 2),
recall divides hits by the member's number of relevant items, MAP@k divides by min(relevant, k), and
members without relevant items are left out by the caller.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def hits_matrix(top_k: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean (members, k): whether the item at each rank is relevant to that member (row i of both)."""
    relevant = relevant.tocsr()
    n_items = relevant.shape[1]
    rel_rows = np.repeat(np.arange(relevant.shape[0], dtype=np.int64), np.diff(relevant.indptr))
    rel_keys = np.sort(rel_rows * n_items + relevant.indices.astype(np.int64))
    keys = np.arange(top_k.shape[0], dtype=np.int64)[:, None] * n_items + top_k.astype(np.int64)
    pos = np.clip(np.searchsorted(rel_keys, keys), 0, max(len(rel_keys) - 1, 0))
    return (rel_keys[pos] == keys) & (top_k >= 0) if len(rel_keys) else np.zeros(top_k.shape, bool)


def ranking_metrics(top_k: np.ndarray, relevant: sp.csr_matrix) -> dict[str, float]:
    """Recall@k, NDCG@k and MAP@k averaged over members; `top_k` is (members, k) item indexes, best first."""
    k = top_k.shape[1]
    hits = hits_matrix(top_k, relevant)
    n_rel = np.diff(relevant.tocsr().indptr).astype(np.float64)
    if (n_rel == 0).any():
        raise ValueError("ranking_metrics: every member needs at least one relevant item")
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(n_rel, k).astype(np.int64) - 1]
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return {
        f"recall@{k}": float(np.mean(hits.sum(axis=1) / n_rel)),
        f"ndcg@{k}": float(np.mean(dcg / ideal)),
        f"map@{k}": float(np.mean((precision_at * hits).sum(axis=1) / np.minimum(n_rel, k))),
    }


def coverage(top_k: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one member's list."""
    return float(len(np.unique(top_k[top_k >= 0])) / n_items)


def sampled_hit_rate(scores: np.ndarray, k: int) -> dict[str, float]:
    """NCF protocol: column 0 holds the held-out item's score, the rest its sampled negatives' scores.

    The rank is the number of negatives scoring strictly higher, so ties favour the held-out item as in
    the reference evaluation code.
    """
    rank = (scores[:, 1:] > scores[:, :1]).sum(axis=1)
    hit = rank < k
    return {f"hr@{k}": float(hit.mean()), f"ndcg@{k}": float((hit / np.log2(rank + 2.0)).mean())}


def next_basket_per_member(top_k: np.ndarray, targets: sp.csr_matrix, seen: sp.csr_matrix) -> dict[str, np.ndarray]:
    """Per-member recall@k, NDCG@k, and recall on repeat (bought before) and explore (never bought) targets.

    Row i of `top_k` (-1 pads short lists), `targets` and `seen` is one member; repeat and explore recall are
    NaN for a member without targets of that kind (Li et al. 2023 average them over the members who have some).
    """
    k = top_k.shape[1]
    targets = targets.tocsr()
    repeat = targets.multiply(seen).tocsr()
    repeat.eliminate_zeros()
    explore = (targets - repeat).tocsr()
    explore.eliminate_zeros()
    hits = hits_matrix(top_k, targets)
    n_rel = np.diff(targets.indptr).astype(np.float64)
    if (n_rel == 0).any():
        raise ValueError("next_basket_per_member: every member needs a target basket")
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = np.cumsum(discounts)[np.minimum(n_rel, k).astype(np.int64) - 1]
    out = {f"recall@{k}": hits.sum(axis=1) / n_rel, f"ndcg@{k}": (hits * discounts).sum(axis=1) / ideal}
    for name, part in (("repeat", repeat), ("explore", explore)):
        n_part = np.diff(part.indptr).astype(np.float64)
        found = hits_matrix(top_k, part).sum(axis=1) if part.nnz else np.zeros(len(n_part))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{name}_recall@{k}"] = np.where(n_part > 0, found / n_part, np.nan)
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over members (NaNs, members without the metric, left out)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // len(values))  # resamples drawn at once, bounded memory
    for start in range(0, n_boot, step):
        draws = rng.integers(0, len(values), (min(step, n_boot - start), len(values)))
        means[start:start + len(draws)] = values[draws].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))
