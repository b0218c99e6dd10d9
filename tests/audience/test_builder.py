"""Audience rules against hand-built members: each filter, each suppression, the carve-out, cancellation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from omnirec.audience import (
    AudienceBuilder,
    AudienceCancelled,
    AudienceRequest,
    AudienceSources,
    FactorModel,
    RankBy,
    Suppression,
)
from omnirec.domain.errors import FailedPrecondition, InvalidArgument
from omnirec.domain.idmap import IdMap
from omnirec.domain.lifecycle import DAY, LifecycleRules
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.feature_store.model import MemberProfile
from omnirec.offers.catalogue import Cap, Target, load_catalogue
from omnirec.offers.config import EXAMPLE_CATALOGUE
from omnirec.offers.store import Contact, ContactHistory, Coupon, Wallet
from omnirec.offers.uplift import UpliftScores

NOW = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
ITEMS = ["beauty/skincare-1", "beauty/makeup-1", "home/kitchen-1"]
CATEGORY = {"beauty/skincare-1": "beauty/skincare", "beauty/makeup-1": "beauty/makeup",
            "home/kitchen-1": "home/kitchen"}


def profile(member_id: str, tier: str = "gold", last_purchase_days: float = 3, consent: bool = True,
            home_store: str = "s1", region: str = "north") -> MemberProfile:
    last = NOW - last_purchase_days * DAY
    return MemberProfile(
        member_id=member_id, tier=tier, lifecycle_stage=LifecycleStage.ACTIVE, recency_score=3, frequency_score=3,
        monetary_score=3, points=0, home_store=home_store, region=region,
        activity={c: int(c is Channel.APP) for c in Channel}, consent={c: consent for c in Channel},
        signup_ts=NOW - 800 * DAY,
        last_seen_ts=last, last_purchase_ts=last, prev_purchase_ts=last - 10 * DAY, written_ts=NOW)


class World:
    """Members with factors aligned so member i likes beauty with score 10 - i; their stored state."""

    def __init__(self, n: int = 10) -> None:
        self.ids = [f"m{i}" for i in range(n)]
        self.profiles: dict[str, MemberProfile | None] = {m: profile(m) for m in self.ids}
        self.contacts: dict[str, list[Contact]] = {m: [] for m in self.ids}
        self.coupons: dict[str, list[Coupon]] = {m: [] for m in self.ids}
        self.reads = 0
        member_factors = np.array([[10.0 - i, 0.0] for i in range(n)], np.float32)
        item_factors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
        self.model = FactorModel("v1", IdMap.from_ids(np.array(self.ids, object)), member_factors,
                                 IdMap.from_ids(np.array(ITEMS, object)), item_factors)
        self.catalogue = load_catalogue(EXAMPLE_CATALOGUE)

    def read_profiles(self, ids: Sequence[str]) -> tuple[int, list[MemberProfile | None]]:
        self.reads += 1
        return 7, [self.profiles[m] for m in ids]

    def marketing(self, ids: Sequence[str], since: float, now: float,
                  wallets: bool) -> list[tuple[ContactHistory, Wallet]]:
        return [(ContactHistory(tuple(c for c in self.contacts[m] if c.ts >= since), since),
                 Wallet(tuple(self.coupons[m]) if wallets else (), now)) for m in ids]

    def sources(self) -> AudienceSources:
        def target_items(target: Target) -> list[str]:
            return [i for i in ITEMS if CATEGORY[i] in target.ids or i in target.ids]

        return AudienceSources(self.model, None, self.catalogue, target_items, self.read_profiles, self.marketing)


FATIGUE = {Channel.APP: Cap(count=2, period_days=7)}


def build(world: World, chunk: int = 3, **request: object):  # type: ignore[no-untyped-def]
    builder = AudienceBuilder(TierLadder(), LifecycleRules(), FATIGUE, chunk=chunk)
    args: dict[str, object] = {"channel": Channel.APP, "max_size": 100,
                               "target": Target(scope="categories", ids=("beauty/skincare",))}
    args.update(request)
    if "offer_id" in request:
        args["target"] = None
    return builder.build(AudienceRequest(**args), world.sources(), NOW)  # type: ignore[arg-type]


def test_scores_every_member_best_first_and_stops_when_full() -> None:
    world = World()
    audience = build(world, max_size=4)
    assert list(audience.rows.member_ids) == ["m0", "m1", "m2", "m3"]
    assert list(audience.rows.ranks) == [1, 2, 3, 4]
    assert np.all(np.diff(audience.rows.scores) <= 0)
    assert audience.examined == 4 and audience.scored == 10
    assert world.reads == 2  # two chunks of 3 were enough
    assert audience.feature_generation == 7 and audience.model_version == "v1"


@pytest.mark.parametrize(("change", "request_args", "expected"), [
    (lambda w: w.profiles.update(m0=None), {}, Suppression.NO_PROFILE),
    (lambda w: w.profiles.update(m0=profile("m0", tier="basic")), {"tiers": frozenset({"gold"})},
     Suppression.FILTERED_TIER),
    (lambda w: w.profiles.update(m0=profile("m0", last_purchase_days=200)),
     {"stages": frozenset({LifecycleStage.ACTIVE})}, Suppression.FILTERED_STAGE),
    (lambda w: w.profiles.update(m0=profile("m0", home_store="s9")), {"home_stores": frozenset({"s1"})},
     Suppression.FILTERED_STORE),
    (lambda w: w.profiles.update(m0=profile("m0", region="south")), {"regions": frozenset({"north"})},
     Suppression.FILTERED_REGION),
    (lambda w: w.profiles.update(m0=profile("m0", consent=False)), {}, Suppression.NO_CONSENT),
    (lambda w: w.contacts["m0"].extend(Contact(NOW - DAY, Channel.APP, "x", f"d{i}") for i in range(2)), {},
     Suppression.FATIGUE_CAP),
])
def test_each_filter_and_suppression_names_its_rule(change, request_args, expected) -> None:  # type: ignore[no-untyped-def]
    world = World()
    change(world)
    audience = build(world, **request_args)
    assert "m0" not in set(audience.rows.member_ids)
    assert audience.suppressed == {expected: 1}
    builder = AudienceBuilder(TierLadder(), LifecycleRules(), FATIGUE)
    request = AudienceRequest(Channel.APP, 100, target=Target(scope="categories", ids=("beauty/skincare",)),
                              **request_args)
    verdict = builder.explain(request, world.sources(), "m0", NOW)
    assert not verdict.included and verdict.suppression is expected


def test_offer_rules_are_the_offer_decisions_rules() -> None:
    world = World()
    offer = world.catalogue.get("beauty-20pct")
    assert offer is not None and offer.eligibility.min_tier == "silver" and offer.per_member_cap is not None
    world.profiles["m1"] = profile("m1", tier="basic")
    world.contacts["m2"] += [Contact(NOW - DAY, Channel.WEB, offer.id, f"d{i}") for i in range(2)]
    world.coupons["m3"].append(Coupon("c1", "m3", offer.id, "d", NOW - 5 * DAY, NOW + DAY, 12.0, NOW - DAY, "r"))
    audience = build(world, offer_id=offer.id)
    out = set(world.ids) - set(audience.rows.member_ids)
    assert audience.suppressed.get(Suppression.NOT_ELIGIBLE_TIER) == 1 and "m1" in out
    assert audience.suppressed.get(Suppression.CAP_REACHED) == 1 and "m2" in out
    assert audience.suppressed.get(Suppression.ALREADY_REDEEMED) == 1 and "m3" in out
    held = [m for m in world.ids if m not in ("m1", "m2", "m3") and m in out]
    assert audience.suppressed.get(Suppression.HOLDOUT, 0) == len(held)  # the offer's own 5% holdout


def test_min_score_cuts_the_ranking() -> None:
    audience = build(World(), min_score=6.5)
    assert list(audience.rows.member_ids) == ["m0", "m1", "m2", "m3"]
    assert audience.suppressed == {Suppression.BELOW_MIN_SCORE: 6}


def test_holdout_carve_out_is_flagged_stable_and_near_its_share() -> None:
    world = World(4000)
    first = build(world, chunk=1000, max_size=4000, holdout_share=0.2, send_id="spring")
    again = build(world, chunk=1000, max_size=4000, holdout_share=0.2, send_id="spring")
    other = build(world, chunk=1000, max_size=4000, holdout_share=0.2, send_id="summer")
    assert len(first.rows) == 4000  # flagged, not dropped
    assert np.array_equal(first.rows.holdout, again.rows.holdout)
    assert abs(first.rows.holdout.mean() - 0.2) < 0.02
    assert not np.array_equal(first.rows.holdout, other.rows.holdout)


def test_cancellation_stops_at_the_next_chunk() -> None:
    world = World(100)
    builder = AudienceBuilder(TierLadder(), LifecycleRules(), FATIGUE, chunk=10)
    request = AudienceRequest(Channel.APP, 100, target=Target(scope="items", ids=("beauty/makeup-1",)))
    with pytest.raises(AudienceCancelled):
        builder.build(request, world.sources(), NOW, cancelled=lambda: world.reads >= 2)
    assert world.reads == 2


@pytest.mark.parametrize(("request_args", "field"), [
    ({"max_size": 0}, "max_size"),
    ({"target": None}, "target"),
    ({"tiers": frozenset({"diamond"})}, "tiers"),
    ({"holdout_share": 1.0}, "holdout_share"),
    ({"holdout_share": 0.1}, "send_id"),
    ({"target": Target(scope="items", ids=("nope",))}, "target"),
    ({"offer_id": "no-such-offer"}, "offer_id"),
    ({"offer_id": "welcome-10off50", "channel": Channel.STORE, "target": None}, "channel"),
])
def test_bad_requests_name_the_field(request_args: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        build(World(), **request_args)
    assert err.value.field == field


def test_uplift_ranking_needs_an_uplift_model() -> None:
    with pytest.raises(FailedPrecondition, match="uplift"):
        build(World(), rank_by=RankBy.UPLIFT)


def test_uplift_ranking_orders_by_estimated_uplift() -> None:
    world = World(5)
    uplift = UpliftScores(IdMap.from_ids(np.array(world.ids, object)), np.array([0.5, 0.1, 0.2, 0.3, 0.0]),
                          np.array([0.6, 0.6, 0.3, 0.9, 0.05]), "u1")
    sources = world.sources()
    builder = AudienceBuilder(TierLadder(), LifecycleRules(), FATIGUE)
    request = AudienceRequest(Channel.APP, 3, target=Target(scope="items", ids=("beauty/makeup-1",)),
                              rank_by=RankBy.UPLIFT)
    audience = builder.build(request, replace(sources, uplift=uplift), NOW)
    assert list(audience.rows.member_ids) == ["m3", "m1", "m0"]
    assert audience.model_version == "uplift:u1"
