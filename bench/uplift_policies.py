"""Coupon targeting policies at a fixed budget, scored on the simulator's ground truth.

Simulates a retailer (once per seed into `--out`), trains the T-learner uplift model on the exposures of
half of the members and targets `--budget-share` of the other half with each policy: random,
propensity-ranked (P(convert | coupon)), uplift-ranked (P(convert | coupon) - P(convert | none)), and
the oracle (true uplift, an upper bound). Incremental conversions are exact sums of true uplift.
Run by hand: `.venv/bin/python bench/uplift_policies.py [--members 60000] [--seeds 3,4,5]`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from omnirec.offers.evaluation import compare_policies
from omnirec.simulator import SimulationConfig, simulate

RESULTS = Path(__file__).parent / "results" / "uplift_policies.json"


def main(
    members: Annotated[int, typer.Option(help="Members to simulate.")] = 60_000,
    items: Annotated[int, typer.Option(help="Items to simulate.")] = 5_000,
    seeds: Annotated[str, typer.Option(help="Comma-separated simulator seeds; each is one run.")] = "3,4,5",
    budget_share: Annotated[float, typer.Option(help="Share of held-out members each policy may target.")] = 0.1,
    out: Annotated[Path, typer.Option(help="Scratch folder for the simulated retailers.")] =
        Path("/tmp/omnirec-bench-uplift"),
) -> None:
    """Prints a table per seed and writes bench/results/uplift_policies.json."""
    runs = []
    console = Console(width=140)
    for seed in (int(s) for s in seeds.split(",")):
        data = out / f"{members}-{items}-{seed}"
        if not (data / "coupon_ground_truth.parquet").exists():
            simulate(SimulationConfig(n_members=members, n_items=items, seed=seed), data, progress=False)
        started = time.perf_counter()
        results, meta = compare_policies(data, budget_share=budget_share, seed=seed)
        meta.update(seed=seed, seconds=time.perf_counter() - started)
        runs.append(meta)
        table = Table(title=f"seed {seed}: {meta['budget_coupons']:,} coupons to {meta['held_out']:,} held-out "
                            f"members (trained on {meta['training_exposures']:,} exposures)")
        for col in ("policy", "incremental conversions", "x propensity", "discount cost", "incremental margin",
                    "margin / budget"):
            table.add_column(col, justify="right")
        base = next(r for r in results if r.policy == "propensity").incremental_conversions
        for r in results:
            table.add_row(r.policy, f"{r.incremental_conversions:,.0f}", f"{r.incremental_conversions / base:.2f}",
                          f"{r.expected_discount_cost:,.0f}", f"{r.incremental_margin:,.0f}",
                          f"{r.incremental_margin_per_budget:+.3f}")
        console.print(table)
    ratios = [r["uplift_vs_propensity"] for r in runs]
    console.print(f"uplift / propensity incremental conversions: mean {sum(ratios) / len(ratios):.2f}, "
                  f"min {min(ratios):.2f} over {len(ratios)} seeds (target >= 1.3)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"members": members, "items": items, "runs": runs}, indent=2))


if __name__ == "__main__":
    typer.run(main)
