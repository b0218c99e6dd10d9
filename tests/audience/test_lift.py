"""Lift read back from confirmed sends recovers the simulator's ground-truth effect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis
import redis.asyncio

from omnirec.audience import AudienceBuilder, AudienceSources, Campaigns, estimate_lift, sends
from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.readers import RetailData
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.offers.catalogue import load_catalogue
from omnirec.offers.config import EXAMPLE_CATALOGUE
from omnirec.offers.decision_log import DecisionLog
from omnirec.offers.store import OfferStore
from omnirec.simulator import SimulationConfig, simulate


@pytest.fixture(scope="module")
def campaign_retailer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lift")
    simulate(SimulationConfig(n_members=6_000, n_items=300, seed=11), out, progress=False)
    return out


def test_holdout_lift_contains_the_ground_truth_effect(campaign_retailer: Path, redis_client: redis.Redis,
                                                       redis_prefix: str, tmp_path: Path) -> None:
    exposures = pq.read_table(campaign_retailer / "coupon_exposures.parquet")
    truth = pq.read_table(campaign_retailer / "coupon_ground_truth.parquet").to_pydict()
    uplift = dict(zip(truth["member_id"], truth["uplift"], strict=True))
    config = RedisConfig(namespace=redis_prefix, contact_ttl_s=10 * 365 * 86_400)
    store = OfferStore(redis.asyncio.Redis(), config, sync_client=redis_client)  # campaign jobs: the sync client
    log = DecisionLog(tmp_path / "decisions")
    catalogue = load_catalogue(EXAMPLE_CATALOGUE)
    sources = AudienceSources(None, None, catalogue, lambda t: [], lambda ids: (0, []), lambda ids, s, n, w: [])
    campaigns = Campaigns(AudienceBuilder(TierLadder(), LifecycleRules(), {}), lambda: sources, store, log)
    expected = {}
    for campaign in pc.unique(exposures["campaign_id"]).to_pylist():
        rows = exposures.filter(pc.equal(exposures["campaign_id"], campaign)).to_pydict()
        treated = [m for m, t in zip(rows["member_id"], rows["treated"], strict=True) if t]
        control = [m for m, t in zip(rows["member_id"], rows["treated"], strict=True) if not t]
        assert campaigns.confirm(campaign, "", Channel.APP, treated, control, "test", float(rows["exposed_ts"][0]))
        expected[campaign] = float(np.mean([uplift[m] for m in rows["member_id"]]))
    events = RetailData.read(campaign_retailer).events
    estimates = {e.scope: e for e in estimate_lift(sends(log.records()), events, window_days=14)}
    for campaign, effect in expected.items():
        e = estimates[campaign]
        lo, hi = e.incremental_ci95
        assert e.n_treated > 2 * e.n_holdout > 0
        assert lo <= effect <= hi, (campaign, effect, e)
        assert hi - lo < 0.6  # an informative interval, not one that contains everything
