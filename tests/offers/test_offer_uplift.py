"""Uplift model: beats propensity targeting on simulated ground truth; saves and loads without pickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omnirec.domain.idmap import IdMap
from omnirec.offers.evaluation import compare_policies
from omnirec.offers.uplift import FEATURES, UpliftModel, UpliftScores
from omnirec.simulator import SimulationConfig, simulate


@pytest.fixture(scope="module")
def retail_20k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("retail20k")
    simulate(SimulationConfig(n_members=20_000, n_items=1_000, seed=1), out, progress=False)
    return out


def test_uplift_ranking_beats_propensity_at_the_same_budget(retail_20k: Path) -> None:
    results, meta = compare_policies(retail_20k, budget_share=0.1)
    by = {r.policy: r for r in results}
    assert len({r.targeted for r in results}) == 1
    assert meta["uplift_vs_propensity"] >= 1.3
    assert by["uplift"].incremental_conversions > by["random"].incremental_conversions
    assert by["uplift"].incremental_margin_per_budget > by["propensity"].incremental_margin_per_budget
    assert by["oracle"].incremental_conversions >= by["uplift"].incremental_conversions


def test_model_and_scores_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(FEATURES)))
    treated = rng.random(400) < 0.7
    converted = rng.random(400) < np.where(treated, 0.2 + 0.2 * (x[:, 0] > 0), 0.2)
    model = UpliftModel.fit(x, treated, converted)
    model.save(tmp_path / "uplift.npz")
    loaded = UpliftModel.load(tmp_path / "uplift.npz")
    np.testing.assert_allclose(loaded.predict(x)[1], model.predict(x)[1])
    p0, p1 = model.predict(x)
    assert (p1 - p0)[x[:, 0] > 0].mean() > (p1 - p0)[x[:, 0] <= 0].mean()
    scores = UpliftScores(IdMap.from_ids([f"m{i}" for i in range(400)]), p0, p1, "v1")
    scores.save(tmp_path / "scores.npz")
    est = UpliftScores.load(tmp_path / "scores.npz").get("m3")
    assert est is not None and est.p_treated == pytest.approx(p1[3])
    assert UpliftScores.load(tmp_path / "scores.npz").get("nobody") is None
