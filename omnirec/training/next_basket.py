"""Next-basket evaluation: every method's top-k list for each test member's next basket, scored the same way.

The protocol is the one the service is judged by: a time cut-off, each member's first basket after it as the
target, features and models from the history before it only. Metrics come per member, so every mean has a
bootstrap interval and two methods can be compared on the same members (`paired_gap`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from omnirec.domain.errors import InvalidArgument
from omnirec.domain.readers import Interactions
from omnirec.domain.vocab import Intent
from omnirec.training.baskets import Baskets, NextBasketSplit
from omnirec.training.config import TrainConfig
from omnirec.training.metrics import bootstrap_ci, next_basket_per_member
from omnirec.training.models.base import TrainSet
from omnirec.training.models.factorization import ALSRecommender, FactorizationRecommender
from omnirec.training.models.frequency import (
    TIFUKNN,
    BasketRecommender,
    CollaborativeBaseline,
    GPTopFreq,
    GTopFreq,
    PTopFreq,
    StorePopularity,
)
from omnirec.training.models.hybrid import LightFMRecommender
from omnirec.training.ranker import IntentLists, RankerData, TwoStageModel, fit_ranker, intent_lists
from omnirec.training.weighting import collaborative_train_set

METRICS = ("recall", "ndcg", "repeat_recall", "explore_recall")


@dataclass(frozen=True)
class MethodResult:
    """One method's metrics on the test members: means, 95% bootstrap intervals and the per-member values."""

    method: str
    k: int
    n_members: int
    means: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    per_member: dict[str, np.ndarray]

    def row(self) -> dict[str, object]:
        """The JSON row of `bench/results/next_basket.json`."""
        return {"method": self.method, "n_members": self.n_members, **{k: round(v, 5) for k, v in self.means.items()},
                "ci95": {k: [round(lo, 5), round(hi, 5)] for k, (lo, hi) in self.ci95.items()}}


def _mean(values: np.ndarray) -> float:
    """Mean over members that have the metric; NaN when none has (no explore target at all, say)."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def score_lists(method: str, top: np.ndarray, split: NextBasketSplit, n_boot: int = 1000,
                seed: int = 0) -> MethodResult:
    """Metrics of top-k lists whose row i is for `split.members[i]` (-1 pads short lists)."""
    per_member = next_basket_per_member(top, split.targets, split.seen)
    return MethodResult(method=method, k=top.shape[1], n_members=len(split.members),
                        means={name: _mean(v) for name, v in per_member.items()},
                        ci95={name: bootstrap_ci(v, n_boot, seed) for name, v in per_member.items()},
                        per_member=per_member)


def evaluate_methods(methods: Iterable[BasketRecommender], split: NextBasketSplit, k: int = 10,
                     n_boot: int = 1000, seed: int = 0, progress: bool = False) -> list[MethodResult]:
    """Fit each method on the history and score its lists; fitted methods are refitted (cheap for baselines)."""
    results = []
    for method in tqdm(list(methods), desc="next-basket", unit="method", disable=not progress):
        method.fit(split.history)
        results.append(score_lists(method.name, method.recommend(split.members, k), split, n_boot, seed))
    return results


def paired_gap(a: MethodResult, b: MethodResult, metric: str, n_boot: int = 1000,
               seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of a - b on the same members, bootstrap over members: the interval a gate can trust."""
    diff = a.per_member[metric] - b.per_member[metric]
    lo, hi = bootstrap_ci(diff, n_boot, seed)
    return float(np.nanmean(diff)), lo, hi


@dataclass(frozen=True)
class Comparison:
    """Every method's result on one split, the seconds each took, and the served answer's paired gaps."""

    results: list[MethodResult]
    seconds: dict[str, float]
    gaps: dict[str, dict[str, list[float]]]


def baselines(data: TrainSet, config: TrainConfig, seed: int = 0) -> list[BasketRecommender]:
    """The strongest simple baselines plus ALS and LightFM alone, fitted on `data` where they need it."""
    collaborative = [ALSRecommender(seed=seed, **config.als.kwargs()),
                     LightFMRecommender(seed=seed, **config.lightfm.kwargs())]
    with threadpool_limits(1, "blas"):
        for model in collaborative:
            model.fit(data)
    return [GTopFreq(), PTopFreq(), GPTopFreq(), StorePopularity(), TIFUKNN(seed=seed),
            *(CollaborativeBaseline(m) for m in collaborative)]


SERVED_MIXED = "omnirec"
"""Row name of the served MIXED answer, the one the publish gate judges."""
SERVED = {SERVED_MIXED: Intent.MIXED, "omnirec-buy-again": Intent.BUY_AGAIN, "omnirec-discover": Intent.DISCOVER}
"""Bench row name of each intent the service answers."""


def best_baseline(results: list[MethodResult], metric: str) -> MethodResult:
    """The strongest method on `metric` among those that are not the served answers."""
    return max((r for r in results if r.method not in SERVED), key=lambda r: r.means[metric])


def served_results(tops: dict[Intent, np.ndarray], split: NextBasketSplit, n_boot: int = 1000,
                   seed: int = 0) -> list[MethodResult]:
    """The served rows (`SERVED`) from each intent's top-k lists, rows in `split.members` order."""
    return [score_lists(name, tops[intent], split, n_boot, seed) for name, intent in SERVED.items()]


def list_heads(lists: IntentLists, k: int) -> dict[Intent, np.ndarray]:
    """The first k items of each intent's lists, as the bundle's rows would give them."""
    return {intent: items[:, :k] for intent, items in lists.items.items()}


Serve = Callable[[TwoStageModel, RankerData, FactorizationRecommender, NextBasketSplit, int], dict[Intent, np.ndarray]]
"""How the evaluated top-k rows (rows = `split.members`) come out of a ranker fitted at the split's cut-off."""


def ranked_heads(model: TwoStageModel, data: RankerData, als: FactorizationRecommender, split: NextBasketSplit,
                 k: int) -> dict[Intent, np.ndarray]:
    """The test members' lists from `intent_lists` at the cut-off, first k items of each."""
    lists = intent_lists(model, data.context(split.cut_day, als), split.members, data.params.list_depth)
    return list_heads(lists, k)


def served_gaps(results: list[MethodResult], k: int, n_boot: int = 1000,
                seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Paired gaps of the served MIXED answer (recall, NDCG) and DISCOVER (explore recall) against the strongest
    baseline on each metric."""
    gaps: dict[str, dict[str, list[float]]] = {}
    for name, metric in (("omnirec", f"recall@{k}"), ("omnirec", f"ndcg@{k}"),
                         ("omnirec-discover", f"explore_recall@{k}")):
        ours = next(r for r in results if r.method == name)
        rival = best_baseline(results, metric)
        gaps[f"{name} - {rival.method} ({metric})"] = {"mean_ci95": list(paired_gap(ours, rival, metric, n_boot,
                                                                                    seed))}
    return gaps


def run_comparison(interactions: Interactions, baskets: Baskets, split: NextBasketSplit, config: TrainConfig,
                   k: int = 10, n_boot: int = 1000, seed: int = 0, progress: bool = False,
                   serve: Serve = ranked_heads, promotions: pa.Table | None = None) -> Comparison:
    """Baselines and the served two-stage answers (every intent) on one split, with paired gaps.

    The ranker's lists come from `ranker.intent_lists`, the function that writes the bundle; `serve` gives
    the top-k rows that are scored (the bench writes the bundle's arrays and reads them back through the
    bundle reader). The ALS baseline, fitted on exactly the events up to the cut-off, is the ranker's ALS.
    `promotions` (`domain.readers.read_promotions`) gives the ranker its promotion features.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    data = collaborative_train_set(interactions, config, split.cut_day)
    methods = baselines(data, config, seed)
    seconds["fit_als_lightfm"] = time.perf_counter() - start
    start = time.perf_counter()
    results = evaluate_methods(methods, split, k, n_boot, seed, progress)
    seconds["baselines"] = time.perf_counter() - start
    start = time.perf_counter()
    ranker_data = RankerData(baskets, interactions, config, seed, promotions)
    model = fit_ranker(ranker_data, split.cut_day, progress)
    if model is None:
        raise InvalidArgument("events", "no training window before the cut-off has a next basket among its "
                                        "candidates: the ranker needs a longer history")
    seconds["fit_ranker"] = time.perf_counter() - start
    start = time.perf_counter()
    als = next(m.model for m in methods if isinstance(m, CollaborativeBaseline) and m.name == "ALS")
    if not isinstance(als, FactorizationRecommender):
        raise TypeError("the ALS baseline is a factorization model")
    results = served_results(serve(model, ranker_data, als, split, k), split, n_boot, seed) + results
    seconds["serve_lists"] = time.perf_counter() - start
    return Comparison(results=results, seconds=seconds, gaps=served_gaps(results, k, n_boot, seed))


@dataclass(frozen=True)
class GateDecision:
    """Whether the served answer clears the strongest baseline on every gated metric, and by how much."""

    passed: bool
    served: str
    margin: float
    checks: dict[str, dict[str, object]]
    """Per metric: the rival (strongest baseline on it) and the paired gap's mean and 95% interval."""

    def reason(self) -> str:
        failed = [f"{m}: {c['rival']} gap {c['gap']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
                  for m, c in self.checks.items() if not c["passed"]]
        return "clears every baseline" if self.passed else (
            f"{self.served} does not clear the strongest baseline by {self.margin}: " + "; ".join(failed))


def next_basket_gate(results: list[MethodResult], served: str, metrics: tuple[str, ...], margin: float = 0.0,
                     n_boot: int = 1000, seed: int = 0) -> GateDecision:
    """Pass only if, for each metric, the lower end of the 95% interval of (served - strongest baseline) on
    the same members is above `margin`: a tie or a lucky mean does not publish."""
    ours = next(r for r in results if r.method == served)
    others = [r for r in results if r.method != served and r.method not in SERVED]
    checks: dict[str, dict[str, object]] = {}
    for metric in metrics:
        rival = max(others, key=lambda r: r.means[metric])
        mean, low, high = paired_gap(ours, rival, metric, n_boot, seed)
        checks[metric] = {"rival": rival.method, "gap": mean, "low": low, "high": high, "passed": low > margin}
    return GateDecision(passed=all(c["passed"] for c in checks.values()), served=served, margin=margin,
                        checks=checks)
