"""Spark MLlib ALS vs `implicit` ALS on the same split, weights, factors and regularisation.

    python bench/spark_scale.py DATA_DIR [--seeds N] [--engines implicit,spark local[2],...] [--out JSON]

DATA_DIR is a retailer directory (`omnirec simulate --members 100000 --items 20000 --out DIR`, or
`omnirec import` of Complete Journey). Both models are fitted on the evaluation split's train part, the
way `omnirec train` fits them, and ranked by the same `evaluate` on the same members (NDCG@10 with a 95%
interval over members), each engine with `--seeds` seeds (mean and spread over them, and the ratio to
`implicit` of the same seed), the engines alternating within each seed; Spark on `local[2]` and `local[1]`,
`implicit` with its own threads (BLAS on one). Each fit is timed in wall and CPU seconds (this process's
threads plus, for Spark, its JVM's): on a shared machine the CPU carries over, the wall does not. Both take
`[train.als]` through `training.als_objective` (the one mapping of the shared settings onto each library);
one more `implicit` row fits the matrix as `implicit` reads it unmapped (confidence alpha * r, what omnirec
did before the mapping), to show what the mapping changes, and `implicit exact` solves each row exactly
(Cholesky, as MLlib does) instead of by conjugate gradient, and `implicit gaussian` starts from MLlib's
unit-norm Gaussian rows instead of `implicit`'s uniform [0, 0.01) (a start gap vs a regularisation gap).
Prints a table with the load average around each run and writes bench/results/spark_scale_<data dir
name>.json (after every fit, so a stopped run keeps what it measured).
"""

from __future__ import annotations

import argparse
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
from omnirec.training.als_objective import implicit_kwargs
from omnirec.training.config import TrainConfig
from omnirec.training.evaluation import eval_members, relevant_items
from omnirec.training.metrics import hits_matrix, ranking_metrics
from omnirec.training.models import ALSRecommender, Recommender
from omnirec.training.models.base import TrainSet
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


class ExactALS(ALSRecommender):
    """The mapped objective solved exactly per row (Cholesky, as MLlib solves it) instead of `implicit`'s three
    conjugate-gradient steps from the last sweep: tells a solver gap from a seed gap."""

    name = "als-exact"

    def _model(self) -> AlternatingLeastSquares:
        return AlternatingLeastSquares(random_state=self.seed, use_cg=False, **implicit_kwargs(self.settings))


class GaussianStartALS(ALSRecommender):
    """The mapped objective fitted by `implicit` from MLlib's start (each row a standard Gaussian draw scaled
    to unit norm, as `ALS.initialize` does) instead of `implicit`'s uniform [0, 0.01): if its NDCG moves to
    MLlib's, the start, not MLlib's per-row (ALS-WR) regularisation, is what separates the engines."""

    name = "als-gaussian-start"

    def fit(self, data: TrainSet) -> None:
        self.shape = data.matrix.shape
        super().fit(data)

    def _model(self) -> AlternatingLeastSquares:
        model = super()._model()
        rng = np.random.default_rng(self.seed)
        starts = [rng.standard_normal((n, self.settings.factors), dtype=np.float32) for n in self.shape]
        model.user_factors, model.item_factors = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in starts)
        return model


class UnmappedALS(ImplicitRecommender):
    """`implicit` given R and alpha as they are: confidence alpha * r (omnirec before `als_objective`)."""

    name = "als-unmapped"

    def _model(self) -> AlternatingLeastSquares:
        return AlternatingLeastSquares(random_state=self.seed, **self.params)


def spark_session(cores: int, driver_memory: str) -> SparkSession:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (SparkSession.builder.master(f"local[{cores}]").appName("spark-scale")
            .config("spark.sql.shuffle.partitions", 2 * cores).config("spark.driver.memory", driver_memory)
            .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate())


def cpu_s(spark: SparkSession | None) -> float:
    """CPU seconds so far of this process (all its threads: `implicit` runs its own OpenMP threads) plus, with
    a session, of its JVM (the driver and the local executor threads): on a shared machine the CPU a fit
    used is what carries over, not its wall time."""
    own = time.process_time()
    if spark is None:
        return own
    pid = spark.sparkContext._gateway.proc.pid  # type: ignore[union-attr]  # spark-submit execs the JVM
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return own + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


ENGINES = ("implicit", "implicit exact", "implicit gaussian", "implicit unmapped", "spark local[2]",
           "spark local[1]")


def implicit_model(engine: str, seed: int, als: dict[str, object]) -> Recommender:
    kind = {"implicit": ALSRecommender, "implicit exact": ExactALS, "implicit gaussian": GaussianStartALS,
            "implicit unmapped": UnmappedALS}[engine]
    return kind(seed=seed, **als)


def main(data_dir: Path, iterations: int, seeds: list[int], engines: list[str], driver_memory: str,
         out: Path) -> None:
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
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in seeds:  # engines alternate within a seed, so a change of the machine's load hits every engine
        for engine in engines:
            spark = spark_session(int(engine[-2]), driver_memory) if engine.startswith("spark") else None
            if spark is None:
                model: Recommender = implicit_model(engine, seed, als)
            else:
                paths = event_paths(SparkConfig(), data_dir)
                links = data_dir / "identity_links.parquet"
                events = indexed(spark, read_events(spark, paths, str(links) if links.exists() else None).where(
                    f"{Col.MEMBER_ID} IS NOT NULL AND {Col.ITEM_ID} IS NOT NULL"), interactions).cache()
                events.count()  # read and indexed before the clock starts, as `implicit` gets its matrix
                model = SparkALSRecommender(spark, events, WeightRules.of(config), seed=seed, **als)
            load_before, cpu_before = os.getloadavg()[0], cpu_s(spark)
            start = time.perf_counter()  # Spark's fit includes its weighting and pair sums (a few seconds)
            with threadpool_limits(1, "blas"):
                model.fit(data)
            fit_s, fit_cpu_s = time.perf_counter() - start, cpu_s(spark) - cpu_before
            load_after = os.getloadavg()[0]
            if isinstance(model, SparkALSRecommender):
                reg_param = model.params.reg_param if model.params else None
                model.spark.stop()
            mean, half = ndcg(model, members, data.matrix, relevant, config.eval_k)
            rows.append({"engine": engine, "seed": seed, "fit_s": fit_s, "fit_cpu_s": fit_cpu_s, "ndcg@10": mean,
                         "ci95": half, "load_avg_1m": [load_before, load_after]})
            print(rows[-1], flush=True)
            out.write_text(json.dumps({"data_dir": str(data_dir), "als": als, "mllib_reg_param": reg_param,
                                       "pairs": int(data.matrix.nnz), "eval_members": len(members), "seeds": seeds,
                                       "engines": engines, "runs": rows}, indent=2))
    Console(width=180).print(summary(rows, engines, als, reg_param, data_dir, int(data.matrix.nnz), len(members),
                                     iterations))
    print(f"wrote {out}")


def summary(rows: list[dict[str, object]], engines: list[str], als: dict[str, object], reg_param: float | None,
            data_dir: Path, pairs: int, n_members: int, iterations: int) -> Table:
    """Per engine over the seeds: NDCG@10 mean and standard deviation, and its ratio to `implicit` fitted
    with the same seed (mean, min..max): a gap larger than the seeds' spread is the engines', not the start's."""
    mllib = f"{reg_param:.4g}" if reg_param is not None else "-"
    table = Table(title=f"ALS d={als['factors']}, lambda={als['regularization']} (MLlib regParam {mllib}), "
                        f"alpha={als['alpha']}, {iterations} it. on {data_dir} ({pairs:,} pairs, {n_members:,} eval "
                        f"members)")
    for column in ("engine", "seeds", "fit s (median)", "fit CPU s (median)", "NDCG@10 mean +- sd (seeds)",
                   "95% CI over members", "vs implicit, same seed: mean (min..max)", "load avg (1 min) range"):
        table.add_column(column, justify="right")
    base = {r["seed"]: float(r["ndcg@10"]) for r in rows if r["engine"] == "implicit"}  # type: ignore[arg-type]
    for engine in engines:
        runs = [r for r in rows if r["engine"] == engine]
        values = np.array([float(r["ndcg@10"]) for r in runs])  # type: ignore[arg-type]
        ratios = np.array([float(r["ndcg@10"]) / base[r["seed"]] for r in runs if r["seed"] in base])  # type: ignore[arg-type]
        loads = [x for r in runs for x in r["load_avg_1m"]]  # type: ignore[attr-defined]
        spread = f"{values.std(ddof=1):.5f}" if len(values) > 1 else "-"
        table.add_row(engine, str(len(runs)), f"{np.median([float(r['fit_s']) for r in runs]):.1f}",  # type: ignore[arg-type]
                      f"{np.median([float(r['fit_cpu_s']) for r in runs]):.1f}",  # type: ignore[arg-type]
                      f"{values.mean():.5f} +- {spread}", f"+- {np.mean([float(r['ci95']) for r in runs]):.5f}",  # type: ignore[arg-type]
                      f"{ratios.mean():.1%} ({ratios.min():.1%}..{ratios.max():.1%})" if len(ratios) else "-",
                      f"{min(loads):.0f}-{max(loads):.0f}")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--iterations", type=int, default=TrainConfig().als.iterations)
    parser.add_argument("--seeds", type=int, default=1, help="fits per engine, seeds [train] seed, seed + 1, ...")
    parser.add_argument("--out", type=Path, help="JSON to write (default: bench/results/spark_scale_<dir>.json)")
    parser.add_argument("--driver-memory", default="2g", help="spark.driver.memory (local mode: the whole job)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of: {', '.join(ENGINES)}")
    args = parser.parse_args()
    chosen = args.engines.split(",")
    if "implicit" not in chosen or set(chosen) - set(ENGINES):
        parser.error(f"--engines: `implicit` (the baseline) and any of {', '.join(ENGINES)}")
    main(args.data_dir, args.iterations, [TrainConfig().seed + i for i in range(args.seeds)], chosen,
         args.driver_memory, args.out or RESULTS / f"spark_scale_{args.data_dir.name}.json")
