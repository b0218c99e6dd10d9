"""Offline evaluation on a time split: every model and baseline ranked on the same members, in one table."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from omnirec.training.metrics import coverage, ranking_metrics
from omnirec.training.models.base import Recommender


def relevant_items(test: sp.csr_matrix, train: sp.csr_matrix) -> sp.csr_matrix:
    """Test positives a member had not interacted with before the cut-off: what a recommender can add."""
    seen = train.copy()
    seen.data[:] = 1.0
    fresh = test - test.multiply(seen)
    fresh = sp.csr_matrix(fresh)
    fresh.eliminate_zeros()
    fresh.data[:] = 1.0
    return fresh


def eval_members(relevant: sp.csr_matrix, train: sp.csr_matrix, limit: int, seed: int) -> np.ndarray:
    """Members with history and something new to find, sampled down to `limit` (seeded) to bound time."""
    has_train = np.diff(train.indptr) > 0
    has_test = np.diff(relevant.indptr) > 0
    members = np.flatnonzero(has_train & has_test)
    if len(members) > limit:
        members = np.sort(np.random.default_rng(seed).choice(members, limit, replace=False))
    return members


def evaluate(models: list[Recommender], train: sp.csr_matrix, relevant: sp.csr_matrix, members: np.ndarray,
             k: int, batch: int = 512, progress: bool = True) -> dict[str, dict[str, float]]:
    """Recall/NDCG/MAP@k and coverage per model; items seen in training are never recommended."""
    results: dict[str, dict[str, float]] = {}
    target = relevant[members]
    for model in tqdm(models, desc="evaluate", unit="model", disable=not progress):
        top = model.recommend(members, k, exclude=train, batch=batch)
        results[model.name] = {**ranking_metrics(top, target), f"coverage@{k}": coverage(top, train.shape[1])}
    return results
