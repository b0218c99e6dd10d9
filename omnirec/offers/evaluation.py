"""Offline comparison of coupon targeting policies on the simulator's ground truth, at a fixed budget.

The uplift model is trained on the exposures of one half of the members; the other half is scored, and
each policy targets the same number of held-out members. Because the simulator knows every member's true
conversion probability with and without a coupon, a policy's incremental conversions are exact:
the sum of (p_treated - p_control) over the members it targets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omnirec.domain.idmap import IdMap
from omnirec.domain.readers import EXPOSURES_FILE, GROUND_TRUTH_FILE, RetailData
from omnirec.domain.vocab import Col
from omnirec.offers.uplift import UpliftModel, behaviour_features, exposure_training_set

COUPON_VALUE = 10.0
"""Face value of the simulator's coupons (`simulator.coupons.COUPON_VALUE`)."""
MARGIN = 30.0
"""Margin of one converted order, for incremental margin."""


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    targeted: int
    incremental_conversions: float
    expected_discount_cost: float
    incremental_margin: float
    incremental_margin_per_budget: float
    """Incremental margin per currency unit of budget (targeted x coupon value, reserved at issue)."""


def score_policy(name: str, chosen: np.ndarray, p_control: np.ndarray, p_treated: np.ndarray) -> PolicyResult:
    lift = float((p_treated[chosen] - p_control[chosen]).sum())
    cost = float(p_treated[chosen].sum() * COUPON_VALUE)
    margin = lift * MARGIN - cost
    return PolicyResult(name, len(chosen), lift, cost, margin, margin / max(len(chosen) * COUPON_VALUE, 1e-9))


def compare_policies(data_dir: Path, budget_share: float = 0.1, seed: int = 0) -> tuple[list[PolicyResult], dict]:
    """Random, propensity-ranked and uplift-ranked targeting of `budget_share` of the held-out members."""
    data = RetailData.read(data_dir)
    exposures = pq.read_table(Path(data_dir) / EXPOSURES_FILE)
    truth = pq.read_table(Path(data_dir) / GROUND_TRUTH_FILE)
    members = data.members
    ids = members["member_id"].to_numpy(zero_copy_only=False)
    rng = np.random.default_rng(seed)
    train_members = set(ids[rng.random(len(ids)) < 0.5].tolist())
    in_train = np.array([m in train_members for m in exposures["member_id"].to_pylist()])
    x, treated, converted = exposure_training_set(exposures.filter(in_train), data.events, data.items, members)
    model = UpliftModel.fit(x, treated, converted)

    held_out = np.array([m not in train_members for m in ids])
    as_of = float(pc.max(data.events[Col.TS]).as_py()) + 1
    p0, p1 = model.predict(behaviour_features(data.events, data.items, members, as_of, exposures)[held_out])
    truth_idx = IdMap.from_ids(truth["member_id"].to_numpy(zero_copy_only=False)).to_internal(ids[held_out])
    true_p0 = truth["p_convert_control"].to_numpy()[truth_idx]
    true_p1 = truth["p_convert_treated"].to_numpy()[truth_idx]
    budget = int(budget_share * held_out.sum())
    results = [
        score_policy("random", rng.choice(len(p0), budget, replace=False), true_p0, true_p1),
        score_policy("propensity", np.argsort(-p1, kind="stable")[:budget], true_p0, true_p1),
        score_policy("uplift", np.argsort(-(p1 - p0), kind="stable")[:budget], true_p0, true_p1),
        score_policy("oracle", np.argsort(-(true_p1 - true_p0), kind="stable")[:budget], true_p0, true_p1),
    ]
    by = {r.policy: r for r in results}
    meta = {
        "members": len(ids), "held_out": int(held_out.sum()), "training_exposures": int(in_train.sum()),
        "budget_coupons": budget, "budget_share": budget_share, "coupon_value": COUPON_VALUE, "margin": MARGIN,
        "uplift_vs_propensity": by["uplift"].incremental_conversions / by["propensity"].incremental_conversions,
        "results": [asdict(r) for r in results],
    }
    return results, meta
