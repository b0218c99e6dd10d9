"""Scores for every member at once: one blocked matrix product, never a Python loop over members."""

from __future__ import annotations

import numpy as np

MAX_TARGET_ITEMS = 512
"""A target wider than this (a whole department) is scored on its most popular items: the max over 512
items already finds the members who like the target, and it bounds the product at N x 512."""
BLOCK = 65_536


def target_vectors(item_factors: np.ndarray, target_idx: np.ndarray, popularity: np.ndarray | None) -> np.ndarray:
    """The factor rows of the target's items, cut to the `MAX_TARGET_ITEMS` most popular (without a
    popularity, an evenly spaced sample of them: still deterministic)."""
    idx = np.unique(target_idx)
    if len(idx) > MAX_TARGET_ITEMS:
        if popularity is not None:
            idx = idx[np.argsort(-popularity[idx], kind="stable")[:MAX_TARGET_ITEMS]]
        else:
            idx = idx[np.linspace(0, len(idx) - 1, MAX_TARGET_ITEMS).astype(np.int64)]
    return np.ascontiguousarray(item_factors[idx], dtype=np.float32)


def affinity_scores(member_factors: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each member's best inner product with any target item (float32, one value per member row)."""
    out = np.empty(len(member_factors), np.float32)
    t = targets.T
    for start in range(0, len(member_factors), BLOCK):
        block = np.asarray(member_factors[start:start + BLOCK], dtype=np.float32)
        out[start:start + len(block)] = (block @ t).max(axis=1)
    return out


def ranked(scores: np.ndarray) -> np.ndarray:
    """Member rows best first; ties keep row order, so the same scores always give the same audience."""
    return np.argsort(-scores, kind="stable")
