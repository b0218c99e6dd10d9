"""The pure pipeline: tier and lifecycle gating, consent, stock, holdout, caps, fatigue, scoring, explain."""

from __future__ import annotations

import numpy as np

from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.offers.catalogue import Cap, load_catalogue
from omnirec.offers.policy import OfferState, Rule, UpliftEstimate, in_holdout, rank_offers, score_offer
from tests.offers.conftest import EXAMPLE, NOW, member

CAT = load_catalogue(EXAMPLE)
TIERS = TierLadder()
GOLD_ONLY = "gold-gift-electronics"
WINBACK = "winback-15off60"


def rank(m: object, channel: Channel = Channel.APP, states: dict | None = None, k: int = 20, **kw: object):  # noqa: ANN201
    return rank_offers(CAT.offers, m, channel, NOW, states or {}, TIERS, k, **kw)  # type: ignore[arg-type]


def reasons(ranking: object) -> dict[str, str]:
    return {e.offer_id: e.rule for e in ranking.excluded}  # type: ignore[attr-defined]


def test_basic_member_never_gets_a_gold_only_offer() -> None:
    for i in range(300):
        for stage in LifecycleStage:
            r = rank(member(f"m{i}", "basic", stage))
            assert GOLD_ONLY not in [s.offer.id for s in r.chosen]
            assert reasons(r)[GOLD_ONLY] in (Rule.NOT_ELIGIBLE_TIER, Rule.WRONG_CHANNEL)
    gold = rank(member("g", "gold"), Channel.WEB)
    assert GOLD_ONLY in [s.offer.id for s in gold.chosen] or reasons(gold)[GOLD_ONLY] == Rule.HOLDOUT
    platinum = [m for m in (member(f"p{i}", "platinum") for i in range(50))
                if not in_holdout(GOLD_ONLY, m.member_id, 0.05)][0]
    chosen = next(s for s in rank(platinum, Channel.WEB).chosen if s.offer.id == GOLD_ONLY)
    assert "eligible:tier>=gold" in chosen.reasons


def test_active_member_never_gets_a_reactivation_coupon() -> None:
    for i in range(300):
        for tier in TIERS.names:
            r = rank(member(f"m{i}", tier, LifecycleStage.ACTIVE))
            assert WINBACK not in [s.offer.id for s in r.chosen]
            assert reasons(r)[WINBACK] == Rule.NOT_ELIGIBLE_LIFECYCLE
    lapsed = [member(f"d{i}", "basic", LifecycleStage.DORMANT) for i in range(40)]
    got = [m for m in lapsed if WINBACK in [s.offer.id for s in rank(m).chosen]]
    assert len(got) >= 30


def test_explain_lists_every_excluded_offer_with_its_rule() -> None:
    r = rank(member("m1", "silver", LifecycleStage.ACTIVE, frozenset({Channel.WEB})), Channel.APP)
    assert r.chosen == []
    assert {e.offer_id for e in r.excluded} == {o.id for o in CAT.offers}
    assert {e.rule for e in r.excluded} <= {Rule.NO_CONSENT, Rule.WRONG_CHANNEL}
    r = rank(member("m1", "platinum", LifecycleStage.ACTIVE), Channel.APP, k=1)
    assert len(r.chosen) == 1
    assert {e.offer_id for e in r.excluded} | {r.chosen[0].offer.id} == {o.id for o in CAT.offers}
    assert Rule.BELOW_TOP_K in {e.rule for e in r.excluded}
    assert all(e.detail for e in r.excluded)


def test_out_of_stock_target_is_excluded() -> None:
    r = rank(member("m1", "silver"), Channel.APP, {"kitchen-5off25": OfferState(target_in_stock=False)})
    assert reasons(r)["kitchen-5off25"] == Rule.OUT_OF_STOCK


def test_per_member_cap_and_channel_fatigue() -> None:
    m = [x for x in (member(f"m{i}", "silver") for i in range(50)) if not in_holdout("kitchen-5off25", x.member_id,
                                                                                      0.1)][0]
    r = rank(m, states={"kitchen-5off25": OfferState(member_contacts=2)})
    assert reasons(r)["kitchen-5off25"] == Rule.CAP_REACHED
    r = rank(m, states={"kitchen-5off25": OfferState(member_contacts=1)})
    assert "kitchen-5off25" in [s.offer.id for s in r.chosen]
    tired = rank(m, channel_contacts=3, fatigue=Cap(count=3, period_days=7))
    assert tired.chosen == []
    assert Rule.FATIGUE_CAP in set(reasons(tired).values())
    fresh = rank(m, channel_contacts=2, fatigue=Cap(count=3, period_days=7))
    assert fresh.chosen


def test_holdout_is_stable_and_close_to_its_share() -> None:
    ids = [f"m{i:06d}" for i in range(20_000)]
    first = np.array([in_holdout("winback-15off60", m, 0.1) for m in ids])
    again = np.array([in_holdout("winback-15off60", m, 0.1) for m in ids])
    other = np.array([in_holdout("kitchen-5off25", m, 0.1) for m in ids])
    assert (first == again).all()
    assert 0.09 < first.mean() < 0.11
    assert (first != other).any()
    for m in np.array(ids)[first][:20]:
        r = rank(member(str(m), "basic", LifecycleStage.DORMANT))
        assert reasons(r)["winback-15off60"] == Rule.HOLDOUT


def test_affinity_and_uplift_drive_the_score() -> None:
    offer = CAT.get("beauty-20pct")
    assert offer is not None
    low, high = (score_offer(offer, OfferState(affinity=a), None) for a in (0.1, 0.9))
    assert high.score > low.score and high.propensity > low.propensity
    sure_thing = score_offer(offer, OfferState(), UpliftEstimate(p_control=0.55, p_treated=0.6))
    persuadable = score_offer(offer, OfferState(), UpliftEstimate(p_control=0.04, p_treated=0.45))
    assert persuadable.score > 0 > sure_thing.score
    assert any(r.startswith("score:uplift=") for r in persuadable.reasons)


def test_one_offer_per_target_and_unprofitable_offers_dropped() -> None:
    m = next(x for x in (member(f"m{i}", "platinum", LifecycleStage.NEW) for i in range(50))
             if not in_holdout("welcome-10off50", x.member_id, 0.1))
    r = rank(m)
    keys = [s.offer.target.key for s in r.chosen]
    assert len(keys) == len(set(keys))
    assert Rule.SAME_TARGET in set(reasons(r).values())
    loser = rank(m, uplift=UpliftEstimate(p_control=0.6, p_treated=0.6))
    assert all(not s.offer.kind.is_coupon for s in loser.chosen)
    assert Rule.NOT_WORTH_IT in set(reasons(loser).values())


def test_the_affinity_is_asked_only_for_offers_that_reach_scoring() -> None:
    asked: list[str] = []

    def affinity(offer: object) -> float:
        asked.append(offer.id)  # type: ignore[attr-defined]
        return 0.9

    m = member("m", "basic")
    r = rank(m, affinity=affinity)
    assert sorted(asked) == sorted(s.offer.id for s in r.scored) and asked
    assert all("score:affinity=0.900" in s.reasons for s in r.scored)
    assert {e.offer_id for e in r.excluded if e.rule == Rule.NOT_ELIGIBLE_TIER} & set(asked) == set()
    asked.clear()
    no_consent = rank(member("n", "gold", consent=frozenset()), affinity=affinity)
    assert asked == [] and not no_consent.scored
