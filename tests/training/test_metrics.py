"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from omnirec.training.metrics import coverage, hits_matrix, ranking_metrics, sampled_hit_rate


def relevant(rows: list[list[int]], n_items: int = 10) -> sp.csr_matrix:
    r = np.repeat(np.arange(len(rows)), [len(x) for x in rows])
    c = np.concatenate([np.array(x, dtype=np.int64) for x in rows])
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), n_items))


def test_hand_computed_two_members() -> None:
    top = np.array([[1, 2, 3], [4, 5, 6]])
    rel = relevant([[2, 9], [4]])
    assert hits_matrix(top, rel).tolist() == [[False, True, False], [True, False, False]]
    m = ranking_metrics(top, rel)
    # member 0: one of two relevant found at rank 1; member 1: its only item at rank 0
    assert m["recall@3"] == pytest.approx((0.5 + 1.0) / 2)
    ndcg0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert m["ndcg@3"] == pytest.approx((ndcg0 + 1.0) / 2)
    assert m["map@3"] == pytest.approx(((1 / 2) / 2 + 1.0) / 2)


def test_coverage_counts_distinct_items() -> None:
    assert coverage(np.array([[1, 2], [2, 3]]), 10) == pytest.approx(0.3)


def test_member_without_relevant_items_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="relevant"):
        ranking_metrics(np.array([[1]]), relevant([[]]))


def test_sampled_hit_rate_ranks_from_zero() -> None:
    # held-out first in row 0 (rank 0), behind two negatives in row 1 (rank 2), last in row 2 (rank 3)
    scores = np.array([[9.0, 1, 2, 3], [2.0, 3, 4, 1], [0.0, 1, 2, 3]])
    m = sampled_hit_rate(scores, 3)
    assert m["hr@3"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx((1.0 + 1 / np.log2(4)) / 3)
