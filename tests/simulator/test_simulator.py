from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from omnirec.domain import Channel, EventType, LifecycleStage, TierLadder
from omnirec.domain.readers import EXPOSURES_FILE, GROUND_TRUTH_FILE, RetailData
from omnirec.simulator import SimulationConfig, simulate
from omnirec.simulator.coupons import RESPONSE_TYPES


def test_same_seed_same_files(tmp_path: Path) -> None:
    cfg = SimulationConfig(n_members=300, n_items=100, seed=3)
    simulate(cfg, tmp_path / "a", progress=False)
    simulate(cfg, tmp_path / "b", progress=False)
    for name in ("events.parquet", "members.parquet", "coupon_exposures.parquet", "inventory.parquet"):
        assert pq.read_table(tmp_path / "a" / name).equals(pq.read_table(tmp_path / "b" / name))
    simulate(cfg.model_copy(update={"seed": 4}), tmp_path / "c", progress=False)
    assert not pq.read_table(tmp_path / "a" / "events.parquet").equals(pq.read_table(tmp_path / "c" / "events.parquet"))


def test_every_channel_and_event_type_present(small_retail_dir: Path) -> None:
    events = RetailData.read(small_retail_dir).events
    assert set(events["channel"].to_pylist()) == {c.value for c in Channel}
    assert set(events["event_type"].to_pylist()) == {e.value for e in EventType}


def test_tiers_follow_spend_and_stages_are_valid(small_retail_dir: Path) -> None:
    members = RetailData.read(small_retail_dir).members
    ladder = TierLadder()
    assert members["tier"].to_pylist() == [ladder.tier_for(p) for p in members["points"].to_pylist()]
    assert len(set(members["tier"].to_pylist())) >= 3
    stages = set(members["lifecycle_stage"].to_pylist())
    assert stages <= {s.value for s in LifecycleStage}
    assert {"active", "dormant", "at_risk"} <= stages


def test_ground_truth_is_consistent(small_retail_dir: Path) -> None:
    truth = pq.read_table(small_retail_dir / GROUND_TRUTH_FILE)
    exposures = pq.read_table(small_retail_dir / EXPOSURES_FILE)
    assert truth.num_rows == 1_000 and set(truth["response_type"].to_pylist()) == set(RESPONSE_TYPES)
    uplift = truth["uplift"].to_numpy()
    assert np.allclose(uplift, truth["p_convert_treated"].to_numpy() - truth["p_convert_control"].to_numpy())
    kinds = np.array(truth["response_type"].to_pylist())
    assert uplift[kinds == "persuadable"].min() > 0 and uplift[kinds == "sleeping_dog"].max() < 0
    assert set(exposures["member_id"].to_pylist()) <= set(truth["member_id"].to_pylist())
    assert not pc.any(pc.and_(pc.invert(exposures["treated"]), exposures["redeemed"])).as_py()


def test_taste_structure_is_learnable(small_retail_dir: Path) -> None:
    """Members concentrate on few categories: a member's top category holds far more than a uniform share."""
    data = RetailData.read(small_retail_dir)
    inter = data.interactions()
    cats = np.array(data.items["category"].to_pylist())[inter.item_idx]
    top_share = []
    for m in np.unique(inter.member_idx)[:200]:
        _, counts = np.unique(cats[inter.member_idx == m], return_counts=True)
        if counts.sum() >= 10:
            top_share.append(counts.max() / counts.sum())
    assert np.mean(top_share) > 3 / len(set(cats))


@pytest.mark.parametrize("bad", [{"n_members": -5}, {"n_items": 0}, {"channels": "app,fax"}, {"days": 1}])
def test_bad_parameters_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError) as err:
        SimulationConfig(**bad)
    assert next(iter(bad)) in str(err.value)
