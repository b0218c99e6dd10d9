"""`[train.als]` means one objective on both engines: each library's own solver, given the parameters
`als_objective` maps, solves the Hu-Koren-Volinsky normal equations written out here."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from pyspark.sql import SparkSession

from omnirec.training.als_objective import implicit_kwargs, implicit_matrix, spark_params, spark_reg_param
from omnirec.training.config import ALSSettings

pytestmark = pytest.mark.timeout(900)  # one small MLlib fit: seconds on a quiet machine, minutes on a busy one
SETTINGS = ALSSettings(factors=4, regularization=2.0, alpha=3.0, iterations=3)


def objective_solve(item_factors: np.ndarray, matrix: sp.csr_matrix, alpha: float, lam: np.ndarray) -> np.ndarray:
    """argmin_x sum_i c_i (p_i - x.y_i)^2 + lam_u |x|^2 per member row u, with c = 1 + alpha r and p = r > 0."""
    y = item_factors.astype(np.float64)
    out = np.zeros((matrix.shape[0], y.shape[1]))
    for u in range(matrix.shape[0]):
        row = slice(matrix.indptr[u], matrix.indptr[u + 1])
        cols, r = matrix.indices[row], matrix.data[row]
        c = 1.0 + alpha * r
        a = y.T @ y + (y[cols].T * (c - 1.0)) @ y[cols] + lam[u] * np.eye(y.shape[1])
        out[u] = np.linalg.solve(a, y[cols].T @ c)
    return out


def random_matrix(rng: np.random.Generator, members: int, items: int, per_member: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(members), per_member)
    cols = np.concatenate([rng.choice(items, per_member, replace=False) for _ in range(members)])
    values = rng.uniform(0.05, 2.0, len(rows))  # log1p-scaled weights: many under 1 / alpha
    return sp.csr_matrix((values.astype(np.float32), (rows, cols)), shape=(members, items))


def test_implicit_solves_the_objective_on_the_mapped_matrix() -> None:
    rng = np.random.default_rng(0)
    matrix = random_matrix(rng, 20, 15, 4)
    item_factors = rng.normal(size=(15, SETTINGS.factors)).astype(np.float32)
    want = objective_solve(item_factors, matrix, SETTINGS.alpha, np.full(20, SETTINGS.regularization))

    model = AlternatingLeastSquares(**implicit_kwargs(SETTINGS), random_state=0)
    model.item_factors = item_factors
    got = model.recalculate_user(np.arange(20), implicit_matrix(matrix, SETTINGS))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)

    # Given R and alpha as they are, implicit weighs a pair by alpha * r: another objective.
    unmapped = AlternatingLeastSquares(factors=SETTINGS.factors, regularization=SETTINGS.regularization,
                                       alpha=SETTINGS.alpha, random_state=0)
    unmapped.item_factors = item_factors
    assert not np.allclose(unmapped.recalculate_user(np.arange(20), matrix), want, rtol=1e-2, atol=1e-2)


def test_spark_reg_param_spreads_the_same_total_penalty() -> None:
    rng = np.random.default_rng(1)
    matrix = random_matrix(rng, 30, 50, 3)
    members, items = int((matrix.getnnz(1) > 0).sum()), int((matrix.getnnz(0) > 0).sum())
    reg_param = spark_reg_param(SETTINGS, matrix.nnz, members, items)
    mllib_total = reg_param * (matrix.getnnz(1).sum() + matrix.getnnz(0).sum())  # regParam x pairs, every row
    assert mllib_total == pytest.approx(SETTINGS.regularization * (members + items))


def test_mllib_solves_the_same_objective_as_implicit(spark: SparkSession) -> None:
    """On a matrix where every member and item has 3 pairs, MLlib's per-row penalty (regParam x 3) is the
    constant lambda, so MLlib's last member solve must be implicit's solve from MLlib's item factors."""
    n, per_row = 12, 3
    rows = np.repeat(np.arange(n), per_row)
    cols = (rows + np.tile(np.arange(per_row), n)) % n
    values = np.random.default_rng(2).uniform(0.05, 2.0, len(rows))
    matrix = sp.csr_matrix((values.astype(np.float32), (rows, cols)), shape=(n, n))
    params = spark_params(SETTINGS, pairs=matrix.nnz, members=n, items=n)
    assert params.reg_param * per_row == pytest.approx(SETTINGS.regularization)

    from pyspark.ml.recommendation import ALS

    frame = spark.createDataFrame([(int(u), int(i), float(r)) for u, i, r in zip(rows, cols, values, strict=True)],
                                  ["member", "item", "r"])
    model = ALS(rank=params.rank, alpha=params.alpha, regParam=params.reg_param, maxIter=params.max_iter,
                implicitPrefs=True, seed=0, userCol="member", itemCol="item", ratingCol="r").fit(frame)
    member_factors, item_factors = (np.array([f for _, f in sorted(factors.collect())], np.float32)
                                    for factors in (model.userFactors, model.itemFactors))

    implicit_model = AlternatingLeastSquares(**implicit_kwargs(SETTINGS), random_state=0)
    implicit_model.item_factors = item_factors
    np.testing.assert_allclose(implicit_model.recalculate_user(np.arange(n), implicit_matrix(matrix, SETTINGS)),
                               member_factors, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(objective_solve(item_factors, matrix, SETTINGS.alpha,
                                               np.full(n, SETTINGS.regularization)),
                               member_factors, rtol=1e-3, atol=1e-4)
