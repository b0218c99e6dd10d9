import numpy as np
import pytest
from pydantic import ValidationError

from omnirec.domain import InvalidArgument, LifecycleRules, LifecycleStage, TierLadder, lifecycle_stage
from omnirec.domain.lifecycle import DAY, STAGES, lifecycle_stages
from omnirec.domain.tiers import Tier

NOW = 1_800_000_000.0
RULES = LifecycleRules()


class TestTierLadder:
    def test_thresholds_are_inclusive(self) -> None:
        ladder = TierLadder()
        assert [ladder.tier_for(p) for p in (0, 999, 1_000, 4_999, 5_000, 20_000, 10**9)] == [
            "basic", "basic", "silver", "silver", "gold", "platinum", "platinum"]

    def test_batch_and_scalar_agree(self) -> None:
        ladder = TierLadder()
        points = np.array([0, 1_500, 7_000, 25_000])
        assert [ladder.tiers[c].name for c in ladder.tier_codes(points)] == [ladder.tier_for(p) for p in points]

    def test_rank_and_at_least(self) -> None:
        ladder = TierLadder()
        assert ladder.at_least("platinum", "gold") and ladder.at_least("gold", "gold")
        assert not ladder.at_least("silver", "gold")

    def test_unknown_tier_names_the_field(self) -> None:
        with pytest.raises(InvalidArgument, match="tier: unknown tier 'diamond'"):
            TierLadder().rank("diamond")

    def test_negative_points_rejected(self) -> None:
        with pytest.raises(InvalidArgument, match="points"):
            TierLadder().tier_for(-1)

    def test_live_upgrade_never_downgrades(self) -> None:
        ladder = TierLadder()
        assert ladder.upgraded("silver", 6_000) == "gold"
        assert ladder.upgraded("gold", 10) == "gold"

    @pytest.mark.parametrize("tiers", [
        [Tier(name="a", min_points=10)],
        [Tier(name="a", min_points=0), Tier(name="b", min_points=0)],
        [Tier(name="a", min_points=0), Tier(name="a", min_points=5)],
    ])
    def test_bad_ladders_rejected(self, tiers: list[Tier]) -> None:
        with pytest.raises(ValidationError):
            TierLadder(tiers=tuple(tiers))


class TestLifecycle:
    @pytest.mark.parametrize(("signup_days", "last_days", "prev_days", "stage"), [
        (10, None, None, LifecycleStage.NEW),
        (10, 2, None, LifecycleStage.NEW),
        (400, 5, 30, LifecycleStage.ACTIVE),
        (400, 90, None, LifecycleStage.AT_RISK),
        (400, 200, None, LifecycleStage.DORMANT),
        (800, 500, None, LifecycleStage.CHURNED),
        (800, None, None, LifecycleStage.CHURNED),
        (400, 5, 200, LifecycleStage.REACTIVATED),
        (400, 5, 100, LifecycleStage.ACTIVE),
    ])
    def test_stage_rules(self, signup_days: float, last_days: float | None, prev_days: float | None,
                         stage: LifecycleStage) -> None:
        last = None if last_days is None else NOW - last_days * DAY
        prev = None if prev_days is None else NOW - prev_days * DAY
        assert lifecycle_stage(RULES, NOW, NOW - signup_days * DAY, last, prev) == stage

    def test_dormant_member_who_buys_is_reactivated(self) -> None:
        """The live path: the previous last purchase becomes the previous purchase."""
        signup, old_last = NOW - 600 * DAY, NOW - 200 * DAY
        assert lifecycle_stage(RULES, NOW, signup, old_last) == LifecycleStage.DORMANT
        assert lifecycle_stage(RULES, NOW, signup, NOW, old_last) == LifecycleStage.REACTIVATED

    def test_batch_matches_scalar(self) -> None:
        rng = np.random.default_rng(0)
        signup = NOW - rng.uniform(0, 900, 500) * DAY
        last = np.where(rng.random(500) < 0.2, np.nan, NOW - rng.uniform(0, 600, 500) * DAY)
        prev = last - rng.uniform(0, 300, 500) * DAY
        codes = lifecycle_stages(RULES, NOW, signup, last, prev)
        for i in range(500):
            lp = None if np.isnan(last[i]) else last[i]
            pp = None if np.isnan(prev[i]) else prev[i]
            assert STAGES[codes[i]] == lifecycle_stage(RULES, NOW, signup[i], lp, pp)

    def test_batch_matches_scalar_on_the_thresholds(self) -> None:
        """Whole days hit every threshold exactly (`<=` on both forms), never purchased included."""
        days = np.array([0, 1, 29, 30, 31, 59, 60, 61, 119, 120, 121, 364, 365, 366, 500], dtype=float)
        grid = np.array([(s, lp, pp) for s in days for lp in [np.nan, *days] for pp in [np.nan, *days]
                         if np.isnan(lp) or lp <= s])
        signup, last, prev = (NOW - grid[:, j] * DAY for j in range(3))
        codes = lifecycle_stages(RULES, NOW, signup, last, prev)
        for i in range(len(grid)):
            lp = None if np.isnan(last[i]) else last[i]
            pp = None if np.isnan(prev[i]) else prev[i]
            assert STAGES[codes[i]] == lifecycle_stage(RULES, NOW, signup[i], lp, pp), grid[i]

    def test_thresholds_must_increase(self) -> None:
        with pytest.raises(ValidationError):
            LifecycleRules(active_days=200, at_risk_days=100)
