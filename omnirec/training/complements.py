"""Basket complements: item-item lift from purchases the same member made on the same day.

Lift = P(i and j in a basket) / (P(i) P(j)); it favours pairs bought together more than their popularity
explains (phone + case), where raw co-counts would pair everything with the bestsellers.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import scipy.sparse as sp

from omnirec.domain.clock import DAY
from omnirec.domain.readers import Interactions
from omnirec.domain.vocab import Col, EventType


def top_per_row(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Keep each row's n largest entries (vectorised: one lexsort, no Python loop over rows)."""
    coo = matrix.tocoo()
    order = np.lexsort((-coo.data, coo.row))
    row, col, data = coo.row[order], coo.col[order], coo.data[order]
    starts = np.searchsorted(row, np.arange(matrix.shape[0]))
    keep = (np.arange(len(row)) - starts[row]) < n
    out = sp.csr_matrix((data[keep], (row[keep], col[keep])), shape=matrix.shape)
    out.sort_indices()
    return out


def purchase_lift(interactions: Interactions, rows: np.ndarray, min_count: int, per_item: int) -> sp.csr_matrix:
    """Item x item lift over same-member same-day purchase baskets among `rows`; pairs seen < min_count dropped."""
    n_items = len(interactions.items)
    events = interactions.events
    is_purchase = pc.equal(events[Col.EVENT_TYPE], EventType.PURCHASE.value)
    bought = rows & pc.fill_null(is_purchase, False).to_numpy(zero_copy_only=False)
    day = events[Col.TS].to_numpy()[bought] // DAY
    member = interactions.member_idx[bought].astype(np.int64)
    day = day - day.min() if len(day) else day
    _, basket = np.unique(member * (int(day.max()) + 1 if len(day) else 1) + day, return_inverse=True)
    n_baskets = int(basket.max()) + 1 if len(basket) else 0
    baskets = sp.csr_matrix((np.ones(len(basket), np.float32), (basket, interactions.item_idx[bought])),
                            shape=(n_baskets, n_items))
    baskets.data[:] = 1.0
    baskets.sum_duplicates()
    baskets.data[:] = 1.0
    together = (baskets.T @ baskets).tocsr()
    together.setdiag(0)
    together.data[together.data < min_count] = 0
    together.eliminate_zeros()
    if together.nnz == 0:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    counts = np.asarray(baskets.sum(axis=0)).ravel()
    coo = together.tocoo()
    lift = coo.data * n_baskets / (counts[coo.row] * counts[coo.col])
    return top_per_row(sp.csr_matrix((lift.astype(np.float32), (coo.row, coo.col)), shape=together.shape), per_item)
