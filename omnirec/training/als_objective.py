"""One implicit-feedback ALS objective, two libraries: how `[train.als]` becomes `implicit`'s and Spark
MLlib's parameters, so that "the same factors and regularisation" fits the same model on either engine.

The objective (Hu, Koren & Volinsky 2008), over the weighted matrix R of `weighting.confidence_matrix`:

    min  sum_{u,i} c_ui (p_ui - x_u . y_i)^2  +  lambda (sum_u |x_u|^2 + sum_i |y_i|^2)
    p_ui = 1 if r_ui > 0 else 0,    c_ui = 1 + alpha * r_ui

with d = `factors` and `iterations` full sweeps (members, then items). The libraries read their parameters
differently; their solvers (not their docstrings) settle what each one means:

- `implicit` (0.7, `cpu/als.py`): an observed pair's confidence is `alpha` times the matrix value, an
  unobserved pair's is 1 (its normal equations add `(value - 1) y y^T` and `value * y`). Given R and
  `alpha`, it would weigh a pair by alpha * r, not 1 + alpha * r: a pair with alpha * r < 1 would count less
  than an item never touched. So it gets the matrix 1 + alpha * R (`implicit_matrix`) and alpha = 1.
  Regularisation: `lambda` added to every member's and item's solve.
- MLlib (`ALS.computeFactors`, implicitPrefs): c = 1 + alpha * |r|, preference r > 0, exactly the objective;
  but a member's (item's) solve adds regParam x its number of positive pairs n (ALS-WR, Zhou et al. 2008).
  One regParam cannot reproduce a constant lambda for every row: MLlib's penalty is proportional to the
  row's pairs. `spark_reg_param` picks the regParam whose penalty, summed over all member and item solves,
  equals the constant one: regParam * 2P = lambda * (members + items), i.e.
  regParam = lambda * (members + items) / (2 * pairs), with members and items counted as those with at
  least one pair (the rows MLlib solves). Rows of average length get about the same penalty; heavy rows
  more, light rows less (`bench/spark_scale.py` measures the NDCG this leaves between the engines).

Factors are initialised differently (implicit: uniform [0, 0.01); MLlib: unit-norm Gaussian rows) and
implicit solves each row with three conjugate-gradient steps from the previous sweep's value, MLlib by
Cholesky: both converge to the same stationary points of the objective, not to the same factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import scipy.sparse as sp

from omnirec.training.config import ALSSettings


def implicit_kwargs(settings: ALSSettings) -> dict[str, Any]:
    """`implicit.cpu.als.AlternatingLeastSquares` arguments; its matrix is `implicit_matrix(R, settings)`."""
    return {"factors": settings.factors, "regularization": settings.regularization, "alpha": 1.0,
            "iterations": settings.iterations}


def implicit_matrix(matrix: sp.csr_matrix, settings: ALSSettings) -> sp.csr_matrix:
    """1 + alpha * R on R's stored pairs: the confidences `implicit` reads from its matrix (alpha = 1)."""
    out = matrix.copy()
    out.data = (1.0 + settings.alpha * out.data).astype(out.dtype)
    return out


@dataclass(frozen=True)
class SparkALSParams:
    """`pyspark.ml.recommendation.ALS` arguments for implicit preferences on R itself."""

    rank: int
    alpha: float
    reg_param: float
    max_iter: int


def spark_reg_param(settings: ALSSettings, pairs: int, members: int, items: int) -> float:
    """MLlib's regParam whose ALS-WR penalty (regParam x pairs of the row), summed over every member and
    item solve, equals `implicit`'s constant lambda summed over the same rows (see the module docstring)."""
    return settings.regularization * (members + items) / (2.0 * max(pairs, 1))


def spark_params(settings: ALSSettings, pairs: int, members: int, items: int) -> SparkALSParams:
    """MLlib's parameters for R with `pairs` stored pairs over `members` and `items` non-empty rows."""
    return SparkALSParams(rank=settings.factors, alpha=settings.alpha,
                          reg_param=spark_reg_param(settings, pairs, members, items), max_iter=settings.iterations)
