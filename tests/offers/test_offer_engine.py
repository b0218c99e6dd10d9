"""The engine on the real Redis: budgets under concurrency, idempotent decisions, caps, redemption, the log."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import redis

from omnirec.domain.errors import FailedPrecondition, NotFound, Unavailable
from omnirec.domain.idmap import IdMap
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.feature_store.config import RedisConfig
from omnirec.offers.catalogue import CatalogueSource
from omnirec.offers.config import OfferConfig
from omnirec.offers.decision_log import DecisionLog
from omnirec.offers.engine import ItemCatalogue, OfferEngine
from omnirec.offers.policy import Rule, in_holdout
from omnirec.offers.store import CouponStatus, OfferStore
from omnirec.offers.uplift import UpliftScores
from tests.offers.conftest import EXAMPLE, NOW, EngineFactory, member

ONE_OFFER = """
[[offers]]
id = "flash-5off"
kind = "amount_off"
amount = 5
min_spend = 20
target = {{ scope = "basket" }}
channels = ["app", "pos"]
valid_from = 2025-01-01T00:00:00Z
valid_until = 2030-01-01T00:00:00Z
per_member_cap = {{ count = {cap}, period_days = 30 }}
budget = {{ {budget} }}
value = 40
base_response = 0.3
holdout_share = {holdout}
"""


def single_offer(tmp_path: Path, budget: str, cap: int = 1, holdout: float = 0.0) -> Path:
    path = tmp_path / "one.toml"
    path.write_text(ONE_OFFER.format(budget=budget, cap=cap, holdout=holdout))
    return path


def many_members(n: int, **kw: object) -> dict:
    return {f"m{i:03d}": member(f"m{i:03d}", **kw) for i in range(n)}  # type: ignore[arg-type]


def decide_concurrently(engine: OfferEngine, request_ids: list[str], member_ids: list[str]) -> list:
    with ThreadPoolExecutor(64) as pool:
        return list(pool.map(lambda a: engine.decide_coupon(a[0], a[1], Channel.POS, "s1", [], 50.0),
                             zip(request_ids, member_ids, strict=True)))


@pytest.mark.parametrize("budget, issued", [("max_count = 10", 10), ("max_money = 37.5", 7)])
def test_budget_never_exceeded_under_64_concurrent_calls(make_engine: EngineFactory, tmp_path: Path,
                                                         budget: str, issued: int) -> None:
    members = many_members(64)
    engine = make_engine(members, single_offer(tmp_path, budget))
    decisions = decide_concurrently(engine, [f"r{i}" for i in range(64)], list(members))
    got = [d for d in decisions if d.issued]
    assert len(got) == issued
    assert {d.reason for d in decisions if not d.issued} == {Rule.BUDGET_EXHAUSTED}
    usage = engine.store.usage("flash-5off")
    assert usage.issued == issued and usage.reserved_cents == issued * 500
    assert len({d.coupon_id for d in got}) == issued


def test_retries_of_one_request_issue_once(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine(many_members(1), single_offer(tmp_path, "max_count = 100", cap=50))
    decisions = decide_concurrently(engine, ["same"] * 64, ["m000"] * 64)
    assert len({d.decision_id for d in decisions}) == 1
    assert len({d.coupon_id for d in decisions}) == 1 and decisions[0].issued
    assert sum(not d.replayed for d in decisions) == 1
    assert engine.store.usage("flash-5off").issued == 1
    assert [c.coupon_id for c in engine.store.wallet("m000", NOW).coupons] == [decisions[0].coupon_id]
    again = engine.decide_coupon("same", "m000", Channel.POS, "s1")
    assert again.replayed and again.coupon_id == decisions[0].coupon_id


def test_refusals_are_idempotent_too(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine({"m1": member("m1", stage=LifecycleStage.ACTIVE)})
    first = engine.decide_coupon("r1", "m1", Channel.STORE, "s1")
    assert not first.issued and first.reason == Rule.NOT_ELIGIBLE_TIER and first.offer_id == "beauty-20pct"
    second = engine.decide_coupon("r1", "m1", Channel.STORE, "s1")
    assert second.replayed and second.decision_id == first.decision_id


def test_per_member_cap_holds_across_requests(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine(many_members(1), single_offer(tmp_path, "max_count = 100", cap=2))
    decisions = [engine.decide_coupon(f"r{i}", "m000", Channel.APP, None) for i in range(4)]
    assert [d.issued for d in decisions] == [True, True, False, False]
    assert decisions[-1].reason == Rule.CAP_REACHED


def test_fatigue_cap_per_channel(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine(many_members(1), single_offer(tmp_path, "max_count = 100", cap=50),
                         fatigue={"pos": {"count": 2, "period_days": 7}})
    pos = [engine.decide_coupon(f"r{i}", "m000", Channel.POS, "s1") for i in range(3)]
    assert [d.issued for d in pos] == [True, True, False]
    assert pos[-1].reason == Rule.FATIGUE_CAP
    assert engine.decide_coupon("app", "m000", Channel.APP, None).issued


def test_holdout_members_never_get_the_offer_and_are_logged(make_engine: EngineFactory, tmp_path: Path) -> None:
    members = many_members(60)
    engine = make_engine(members, single_offer(tmp_path, "max_count = 100", holdout=0.3))
    decisions = {m: engine.decide_coupon(f"r-{m}", m, Channel.APP, None) for m in members}
    held = {m for m in members if in_holdout("flash-5off", m, 0.3)}
    assert 5 < len(held) < 35
    assert {m for m, d in decisions.items() if not d.issued} == held
    assert {d.reason for m, d in decisions.items() if m in held} == {Rule.HOLDOUT}
    log = [r for r in engine.log.records() if r["type"] == "decide_coupon"]
    assert sum(r["reason"] == Rule.HOLDOUT for r in log) == len(held)
    assert all(r["catalogue_version"] and "scored" in r and "excluded" in r for r in log)


def test_dormant_member_in_winback_holdout_gets_another_offer(make_engine: EngineFactory) -> None:
    dormant = {f"d{i}": member(f"d{i}", "basic", LifecycleStage.DORMANT) for i in range(100)}
    engine = make_engine(dormant)
    held = next(m for m in dormant if in_holdout("winback-15off60", m, 0.1))
    free = next(m for m in dormant if not in_holdout("winback-15off60", m, 0.1))
    assert engine.decide_coupon("h", held, Channel.APP, None).offer_id != "winback-15off60"
    assert engine.decide_coupon("f", free, Channel.APP, None).offer_id == "winback-15off60"
    record = next(r for r in engine.log.records() if r["request_id"] == "h")
    assert {"offer_id": "winback-15off60", "rule": Rule.HOLDOUT} in record["excluded"]


def test_next_best_offer_counts_contacts_and_explains(make_engine: EngineFactory) -> None:
    m = next(f"g{i}" for i in range(100) if not in_holdout("gold-gift-electronics", f"g{i}", 0.05))
    engine = make_engine({m: member(m, "gold", LifecycleStage.ACTIVE)})
    first = engine.next_best_offer(m, Channel.WEB, None, k=5)
    ids = [s.offer.id for s in first.ranking.chosen]
    assert "gold-gift-electronics" in ids
    assert {e.offer_id for e in first.ranking.excluded} | set(ids) == {o.id for o in engine.catalogue.current().offers}
    second = engine.next_best_offer(m, Channel.WEB, None, k=5)
    assert "gold-gift-electronics" not in [s.offer.id for s in second.ranking.chosen]
    assert {e.offer_id: e.rule for e in second.ranking.excluded}["gold-gift-electronics"] == Rule.CAP_REACHED
    records = [r for r in engine.log.records() if r["type"] == "next_best_offer"]
    assert [r["decision_id"] for r in records] == [first.decision_id, second.decision_id]
    assert records[0]["chosen"] == ids and records[0]["member"]["tier"] == "gold"
    with pytest.raises(NotFound, match="member_id"):
        engine.next_best_offer("nobody", Channel.WEB, None, k=5)


def test_redeem_is_idempotent_and_books_spend(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine(many_members(2), single_offer(tmp_path, "max_count = 100"))
    d = engine.decide_coupon("r", "m000", Channel.APP, None)
    with pytest.raises(NotFound, match="coupon_id"):
        engine.redeem(d.coupon_id, "m001", 50.0)
    with pytest.raises(FailedPrecondition, match="minimum spend"):
        engine.redeem(d.coupon_id, "m000", 10.0)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: engine.redeem(d.coupon_id, "m000", 50.0), range(16)))
    assert sorted(r[0] for r in results) == [False] * 15 + [True]
    assert {r[1] for r in results} == {"flash-5off"}
    usage = engine.store.usage("flash-5off")
    assert usage.redeemed == 1 and usage.spent_cents == 500
    assert len(engine.store.wallet("m000", NOW).by_status(CouponStatus.REDEEMED)) == 1
    assert sum(r["type"] == "redeem_coupon" for r in engine.log.records()) == 1


def test_catalogue_reload_takes_effect_in_the_engine(make_engine: EngineFactory, catalogue_path: Path) -> None:
    engine = make_engine({"m": member("m", "platinum")})
    before = engine.next_best_offer("m", Channel.APP, None, k=10).catalogue_version
    catalogue_path.write_text(EXAMPLE.read_text().replace('eligibility = { tiers = ["platinum"] }',
                                                          'eligibility = { tiers = ["gold"] }'))
    os.utime(catalogue_path, ns=(5, 5))
    after = engine.next_best_offer("m", Channel.APP, None, k=10)
    assert after.catalogue_version != before
    assert {e.offer_id: e.rule for e in after.ranking.excluded}["double-points-platinum"] == Rule.NOT_ELIGIBLE_TIER


class FakeModel:
    """A model whose member likes skincare (i1) most and kitchen (i4) least."""

    items = IdMap.from_ids(["i1", "i2", "i3", "i4", "i5"])

    def member_scores(self, member_id: str) -> np.ndarray | None:
        return np.array([0.9, 0.5, 0.3, 0.0, 0.2]) if member_id == "fan" else None


def test_affinity_from_the_serving_model_ranks_targets(make_engine: EngineFactory) -> None:
    engine = make_engine({"fan": member("fan", "silver"), "stranger": member("stranger", "silver")})
    engine.model = lambda: (FakeModel(), "model-7")
    fan = engine.next_best_offer("fan", Channel.APP, None, k=10)
    assert not fan.degraded and fan.model_version == "model-7"
    scored = {s.offer.id: s for s in fan.ranking.scored}
    assert "score:affinity=0.800" in scored["beauty-20pct"].reasons
    assert "score:affinity=0.000" in scored["kitchen-5off25"].reasons
    stranger = engine.next_best_offer("stranger", Channel.APP, None, k=10)
    assert "score:affinity=0.500" in {s.offer.id: s for s in stranger.ranking.scored}["beauty-20pct"].reasons
    assert [r["model_version"] for r in engine.log.records()] == ["model-7", "model-7"]


def test_uplift_scores_keep_coupons_from_sure_things(make_engine: EngineFactory, tmp_path: Path) -> None:
    members = {"sure": member("sure"), "persuadable": member("persuadable")}
    engine = make_engine(members, single_offer(tmp_path, "max_count = 100"))
    engine.uplift = UpliftScores(IdMap.from_ids(["sure", "persuadable"]), np.array([0.6, 0.04]),
                                 np.array([0.62, 0.45]), "uplift-1")
    sure = engine.decide_coupon("a", "sure", Channel.APP, None)
    assert not sure.issued and sure.reason == Rule.NOT_WORTH_IT
    persuadable = engine.decide_coupon("b", "persuadable", Channel.APP, None)
    assert persuadable.issued and "score:uplift=0.4100" in persuadable.detail
    assert {r["uplift_version"] for r in engine.log.records()} == {"uplift-1"}


def test_redis_down_is_unavailable(tmp_path: Path, catalogue_path: Path, items: ItemCatalogue) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    cfg = OfferConfig(catalogue_path=catalogue_path, decision_log_dir=tmp_path / "d")
    engine = OfferEngine(cfg, CatalogueSource(catalogue_path), OfferStore(dead, RedisConfig(namespace="x")),
                         {"m": member("m")}.get, items, DecisionLog(cfg.decision_log_dir))
    with pytest.raises(Unavailable):
        engine.decide_coupon("r", "m", Channel.APP, None)
    with pytest.raises(Unavailable):
        engine.next_best_offer("m", Channel.APP, None, k=3)


def test_event_invitations_spend_their_budget_when_shown(make_engine: EngineFactory, tmp_path: Path) -> None:
    path = tmp_path / "event.toml"
    path.write_text("""
[[offers]]
id = "evening"
kind = "store_event"
amount = 4
target = { scope = "basket" }
channels = ["app"]
valid_from = 2025-01-01T00:00:00Z
valid_until = 2030-01-01T00:00:00Z
budget = { max_count = 3 }
value = 25
base_response = 0.2
""")
    members = many_members(6)
    engine = make_engine(members, path)
    shown = [bool(engine.next_best_offer(m, Channel.APP, None, k=1).ranking.chosen) for m in members]
    assert shown == [True, True, True, False, False, False]
    last = engine.next_best_offer("m005", Channel.APP, None, k=1).ranking.excluded
    assert [e.rule for e in last] == [Rule.BUDGET_EXHAUSTED]
    assert engine.store.usage("evening").issued == 3
