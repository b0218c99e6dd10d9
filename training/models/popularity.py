"""Popularity baselines: overall, per channel and per store. Every model must beat the overall one.

Popularity is the summed positive confidence of an item over members, so it ranks by the same evidence
the collaborative models see; channel and store tables use the raw positive event weights of their rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from domain.vocab import Col
from training.models.base import Recommender, TrainSet


def grouped_popularity(groups: np.ndarray, item_idx: np.ndarray, weights: np.ndarray,
                       n_items: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """(group names, group x item CSR of summed positive weights); rows with an empty group are skipped."""
    keep = (groups != "") & (weights > 0)
    names, code = np.unique(groups[keep], return_inverse=True)
    table = sp.csr_matrix((weights[keep].astype(np.float32), (code, item_idx[keep])), shape=(len(names), n_items))
    table.sum_duplicates()
    return names.astype(str), table


class PopularityRecommender(Recommender):
    """Same list for everyone; `by_channel` and `by_store` hold the per-channel and per-store tables."""

    name = "popularity"

    def fit(self, data: TrainSet) -> None:
        self.overall = np.asarray(data.matrix.sum(axis=0), dtype=np.float32).ravel()
        events = data.interactions.events
        rows = data.rows
        item_idx = data.interactions.item_idx[rows]
        weights = data.weights[rows]
        n_items = data.matrix.shape[1]
        channel = events[Col.CHANNEL].to_numpy(zero_copy_only=False).astype(str)[rows]
        store = events[Col.STORE_ID].fill_null("").to_numpy(zero_copy_only=False).astype(str)[rows]
        self.by_channel = grouped_popularity(channel, item_idx, weights, n_items)
        self.by_store = grouped_popularity(store, item_idx, weights, n_items)

    def scores(self, member_idx: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.overall, (len(member_idx), len(self.overall)))


def member_segment(member_idx: np.ndarray, groups: np.ndarray, weights: np.ndarray,
                   n_members: int) -> tuple[np.ndarray, np.ndarray]:
    """(segment names, each member's segment index or -1): the group carrying most of the member's weight."""
    keep = (groups != "") & (weights > 0)
    names, code = np.unique(groups[keep], return_inverse=True)
    totals = sp.csr_matrix((weights[keep], (member_idx[keep], code)), shape=(n_members, len(names)))
    best = np.asarray(totals.argmax(axis=1)).ravel() if len(names) else np.zeros(n_members, np.int64)
    has = np.asarray(totals.max(axis=1).todense()).ravel() > 0 if len(names) else np.zeros(n_members, bool)
    return names, np.where(has, best, -1)


class SegmentPopularityRecommender(Recommender):
    """Popularity within the member's own main channel or store; overall popularity breaks ties and fills gaps."""

    def __init__(self, segment: str) -> None:
        if segment not in (Col.CHANNEL, Col.STORE_ID):
            raise ValueError(f"segment must be {Col.CHANNEL!r} or {Col.STORE_ID!r}, got {segment!r}")
        self.segment = segment
        self.name = f"popularity_{'channel' if segment == Col.CHANNEL else 'store'}"

    def fit(self, data: TrainSet) -> None:
        rows = data.rows
        groups = data.interactions.events[self.segment].fill_null("").to_numpy(zero_copy_only=False).astype(str)[rows]
        weights = data.weights[rows]
        n_members, n_items = data.matrix.shape
        _, self.table = grouped_popularity(groups, data.interactions.item_idx[rows], weights, n_items)
        _, self.member_group = member_segment(data.interactions.member_idx[rows], groups, weights, n_members)
        overall = np.asarray(data.matrix.sum(axis=0), dtype=np.float32).ravel()
        self.tie_break = overall / max(float(overall.max()), 1e-12) * 1e-3

    def scores(self, member_idx: np.ndarray) -> np.ndarray:
        group = self.member_group[member_idx]
        out = np.tile(self.tie_break, (len(member_idx), 1))
        has = group >= 0
        if has.any():
            rows = self.table[group[has]].toarray()
            out[has] += rows / np.maximum(rows.max(axis=1, keepdims=True), 1e-12)
        return out
