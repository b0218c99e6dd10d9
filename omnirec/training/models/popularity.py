"""Popularity baselines: overall, per channel and per store. Every model must beat the overall one.

Popularity is the summed positive confidence of an item over members, so it ranks by the same evidence
the collaborative models see; channel and store tables use the raw positive event weights of their rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from omnirec.domain.vocab import Col
from omnirec.training.columns import encode
from omnirec.training.models.base import Recommender, TrainSet


def grouped_popularity(names: np.ndarray, codes: np.ndarray, item_idx: np.ndarray, weights: np.ndarray,
                       n_items: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """(group names, group x item CSR of summed positive weights); rows without a group (code -1) are skipped."""
    keep = (codes >= 0) & (weights > 0)
    table = sp.csr_matrix((weights[keep].astype(np.float32), (codes[keep], item_idx[keep])),
                          shape=(len(names), n_items))
    table.sum_duplicates()
    return names, table


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
        channels, channel_codes = encode(events[Col.CHANNEL])
        stores, store_codes = encode(events[Col.STORE_ID])
        self.by_channel = grouped_popularity(channels, channel_codes[rows], item_idx, weights, n_items)
        self.by_store = grouped_popularity(stores, store_codes[rows], item_idx, weights, n_items)

    def scores(self, member_idx: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.overall, (len(member_idx), len(self.overall)))


def member_segment(member_idx: np.ndarray, codes: np.ndarray, n_groups: int, weights: np.ndarray,
                   n_members: int) -> np.ndarray:
    """Each member's group (the one carrying most of the member's positive weight), or -1 if none."""
    keep = (codes >= 0) & (weights > 0)
    if n_groups == 0:
        return np.full(n_members, -1)
    totals = sp.csr_matrix((weights[keep], (member_idx[keep], codes[keep])), shape=(n_members, n_groups))
    best = np.asarray(totals.argmax(axis=1)).ravel()
    has = np.asarray(totals.max(axis=1).todense()).ravel() > 0
    return np.where(has, best, -1)


class SegmentPopularityRecommender(Recommender):
    """Popularity within the member's own main channel or store; overall popularity breaks ties and fills gaps."""

    def __init__(self, segment: str) -> None:
        if segment not in (Col.CHANNEL, Col.STORE_ID):
            raise ValueError(f"segment must be {Col.CHANNEL!r} or {Col.STORE_ID!r}, got {segment!r}")
        self.segment = segment
        self.name = f"popularity_{'channel' if segment == Col.CHANNEL else 'store'}"

    def fit(self, data: TrainSet) -> None:
        rows = data.rows
        names, codes = encode(data.interactions.events[self.segment])
        codes, weights = codes[rows], data.weights[rows]
        n_members, n_items = data.matrix.shape
        _, self.table = grouped_popularity(names, codes, data.interactions.item_idx[rows], weights, n_items)
        self.member_group = member_segment(data.interactions.member_idx[rows], codes, len(names), weights, n_members)
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
