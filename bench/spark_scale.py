"""Spark MLlib ALS vs `implicit` ALS on the same split, weights, factors and regularisation.

    python bench/spark_scale.py DATA_DIR [ITERATIONS]

DATA_DIR is a retailer directory (`omnirec simulate --members 100000 --items 20000 --out DIR`, or
`omnirec import` of Complete Journey). Both models are fitted on the evaluation split's train part, the
way `omnirec train` fits them, and ranked by the same `evaluate` on the same members (NDCG@10 with a 95%
interval over members); Spark is timed on `local[2]` and `local[1]`, `implicit` on one thread. Both take
`[train.als]` through `training.als_objective` (the one mapping of the shared settings onto each library);
one more `implicit` row fits the matrix as `implicit` reads it unmapped (confidence alpha * r, what omnirec
did before the mapping), to show what the mapping changes. Prints a table with the load average around
each run and writes bench/results/spark_scale_<data dir name>.json. Keep it lean: the machine is shared.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from pyspark.sql import SparkSession
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from omnirec.domain.readers import RetailData
from omnirec.domain.vocab import Col
from omnirec.spark.config import SparkConfig
from omnirec.spark.session import event_paths, read_events
from omnirec.training.config import TrainConfig
from omnirec.training.evaluation import eval_members, relevant_items
from omnirec.training.metrics import hits_matrix, ranking_metrics
from omnirec.training.models import ALSRecommender, Recommender
from omnirec.training.models.factorization import ImplicitRecommender
from omnirec.training.pipeline import train_set
from omnirec.training.spark import SparkALSRecommender, indexed
from omnirec.training.split import time_split
from omnirec.training.weighting import WeightRules, confidence_matrix, event_weights

RESULTS = Path(__file__).parent / "results"


def ndcg(model: Recommender, members: np.ndarray, train: sp.csr_matrix, relevant: sp.csr_matrix,
         k: int) -> tuple[float, float]:
    """Mean NDCG@k (as `training.metrics.ranking_metrics` computes it) and its 95% interval's half-width."""
    top = model.recommend(members, k, exclude=train)
    target = relevant[members]
    hits = hits_matrix(top, target)
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    n_rel = np.minimum(np.diff(target.indptr), k)
    values = (hits * discounts).sum(1) / np.cumsum(discounts)[n_rel - 1]
    if not np.isclose(values.mean(), ranking_metrics(top, target)[f"ndcg@{k}"]):
        raise RuntimeError("per-member NDCG drifted from training.metrics")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))


class UnmappedALS(ImplicitRecommender):
    """`implicit` given R and alpha as they are: confidence alpha * r (omnirec before `als_objective`)."""

    name = "als-unmapped"

    def _model(self) -> AlternatingLeastSquares:
        return AlternatingLeastSquares(random_state=self.seed, **self.params)


def spark_session(cores: int) -> SparkSession:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (SparkSession.builder.master(f"local[{cores}]").appName("spark-scale")
            .config("spark.sql.shuffle.partitions", 2 * cores).config("spark.driver.memory", "3g")
            .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate())


def main(data_dir: Path, iterations: int) -> None:
    config = TrainConfig()
    als = {**config.als.kwargs(), "iterations": iterations}
    retail = RetailData.read(data_dir)
    interactions = retail.interactions()
    split = time_split(interactions, config.test_days)
    data = train_set(retail, interactions, config, split.train_rows, split.cutoff_ts)
    weights = event_weights(interactions, config)
    test = confidence_matrix(interactions.member_idx[split.test_rows], interactions.item_idx[split.test_rows],
                             weights[split.test_rows], data.matrix.shape, config.log_scale)
    relevant = relevant_items(test, data.matrix)
    members = eval_members(relevant, data.matrix, config.eval_members, config.seed)
    rows: list[dict[str, object]] = []
    reg_param = None
    for engine in ("implicit", "implicit unmapped", "spark local[2]", "spark local[1]"):
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        if engine.startswith("implicit"):
            model: Recommender = (ALSRecommender if engine == "implicit" else UnmappedALS)(seed=config.seed, **als)
            with threadpool_limits(1, "blas"):
                model.fit(data)
        else:
            spark = spark_session(int(engine[-2]))
            paths = event_paths(SparkConfig(), data_dir)
            links = data_dir / "identity_links.parquet"
            events = read_events(spark, paths, str(links) if links.exists() else None).where(
                f"{Col.MEMBER_ID} IS NOT NULL AND {Col.ITEM_ID} IS NOT NULL")
            model = SparkALSRecommender(spark, indexed(spark, events, interactions).cache(), WeightRules.of(config),
                                        seed=config.seed, **als)
            start = time.perf_counter()  # the fit, as for implicit (reading is timed by omnirec train)
            model.fit(data)
            reg_param = model.params.reg_param if model.params else None
        fit_s = time.perf_counter() - start
        if engine.startswith("spark"):
            spark.stop()
        mean, half = ndcg(model, members, data.matrix, relevant, config.eval_k)
        rows.append({"engine": engine, "fit_s": fit_s, "ndcg@10": mean, "ci95": half,
                     "load_avg_1m": [load_before, os.getloadavg()[0]]})
        print(rows[-1], flush=True)
    table = Table(title=f"ALS d={als['factors']}, lambda={als['regularization']} (MLlib regParam {reg_param:.4g}), "
                        f"alpha={als['alpha']}, {iterations} it. on {data_dir} ({data.matrix.nnz:,} pairs, "
                        f"{len(members):,} eval members)")
    for column in ("engine", "fit s", "NDCG@10 (95% CI)", "vs implicit", "load avg (1 min) before, after"):
        table.add_column(column, justify="right")
    base = float(rows[0]["ndcg@10"])  # type: ignore[arg-type]
    for r in rows:
        load = r["load_avg_1m"]
        table.add_row(str(r["engine"]), f"{r['fit_s']:.1f}", f"{r['ndcg@10']:.4f} +- {r['ci95']:.4f}",
                      f"{float(r['ndcg@10']) / base:.1%}", f"{load[0]:.1f}, {load[1]:.1f}")  # type: ignore[index]
    Console().print(table)
    out = RESULTS / f"spark_scale_{data_dir.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data_dir": str(data_dir), "als": als, "mllib_reg_param": reg_param,
                               "pairs": int(data.matrix.nnz), "eval_members": len(members), "runs": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else TrainConfig().als.iterations)
