"""The engine on the real Redis: budgets under concurrency, idempotent decisions, caps, redemption, the log."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import redis
import redis.asyncio

from omnirec.domain.errors import FailedPrecondition, InvalidArgument, NotFound, OmnirecError
from omnirec.domain.idmap import IdMap
from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.schema import EVENT_SCHEMA
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.feature_store import pipelined
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.live import LiveUpdater
from omnirec.feature_store.reader import AsyncFeatureReader
from omnirec.offers.catalogue import CatalogueSource
from omnirec.offers.config import OfferConfig
from omnirec.offers.decision_log import DecisionLog
from omnirec.offers.engine import (
    REFERENCE_ITEMS,
    TARGET_CANDIDATES,
    CouponDecision,
    OfferEngine,
    affinity,
    candidate_rows,
    reference_rows,
)
from omnirec.offers.policy import Rule, in_holdout
from omnirec.offers.store import CouponStatus, OfferStore
from omnirec.offers.uplift import UpliftScores
from tests.offers.conftest import EXAMPLE, NOW, EngineFactory, Member, drive, member

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


def many_members(n: int, **kw: object) -> list[Member]:
    return [member(f"m{i:03d}", **kw) for i in range(n)]  # type: ignore[arg-type]


async def decide_all(engine: OfferEngine, request_ids: list[str], member_ids: list[str]) -> list[CouponDecision]:
    """All at once on one event loop, each on its own Redis connection."""
    return await asyncio.gather(*(engine.decide_coupon(r, m, Channel.POS, "s1", [], 50.0)
                                  for r, m in zip(request_ids, member_ids, strict=True)))


@pytest.mark.parametrize("budget, issued", [("max_count = 10", 10), ("max_money = 37.5", 7)])
def test_budget_never_exceeded_under_64_concurrent_calls(make_engine: EngineFactory, tmp_path: Path,
                                                         budget: str, issued: int) -> None:
    members = many_members(64)
    engine = make_engine(members, single_offer(tmp_path, budget))

    async def body() -> None:
        decisions = await decide_all(engine, [f"r{i}" for i in range(64)], [m.member_id for m in members])
        got = [d for d in decisions if d.issued]
        assert len(got) == issued
        assert {d.reason for d in decisions if not d.issued} == {Rule.BUDGET_EXHAUSTED}
        usage = await engine.store.usage("flash-5off")
        assert usage.issued == issued and usage.reserved_cents == issued * 500
        assert len({d.coupon_id for d in got}) == issued

    drive(engine, body)


def test_retries_of_one_request_issue_once(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine(many_members(1), single_offer(tmp_path, "max_count = 100", cap=50))

    async def body() -> None:
        decisions = await decide_all(engine, ["same"] * 64, ["m000"] * 64)
        assert len({d.decision_id for d in decisions}) == 1
        assert len({d.coupon_id for d in decisions}) == 1 and decisions[0].issued
        assert sum(not d.replayed for d in decisions) == 1
        assert (await engine.store.usage("flash-5off")).issued == 1
        wallet = await engine.store.wallet("m000", NOW)
        assert [c.coupon_id for c in wallet.coupons] == [decisions[0].coupon_id]
        again = await engine.decide_coupon("same", "m000", Channel.POS, "s1", [], 50.0)
        assert again.replayed and again.coupon_id == decisions[0].coupon_id

    drive(engine, body)


def test_a_request_id_is_bound_to_its_request(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine(many_members(2), single_offer(tmp_path, "max_count = 100", cap=50))

    async def body() -> None:
        first = await engine.decide_coupon("R", "m000", Channel.APP, None, ["i1", "i2"], 30.0)
        assert first.issued
        retry = await engine.decide_coupon("R", "m000", Channel.APP, None, ["i2", "i1"], 30.0)  # any item order
        assert retry.replayed and retry.coupon_id == first.coupon_id
        for other in [("m001", Channel.APP, None, ["i1", "i2"], 30.0), ("m000", Channel.POS, "s1", ["i1", "i2"], 30.0),
                      ("m000", Channel.APP, None, ["i1"], 30.0), ("m000", Channel.APP, None, ["i1", "i2"], 31.0)]:
            with pytest.raises(InvalidArgument, match="^request_id: 'R' was already used for a different request"):
                await engine.decide_coupon("R", *other)  # type: ignore[arg-type]
        # concurrent first uses of one id by two members: one decides, the other is refused
        outcomes = await asyncio.gather(engine.decide_coupon("S", "m000", Channel.APP, None),
                                        engine.decide_coupon("S", "m001", Channel.APP, None), return_exceptions=True)
        assert sorted(type(o).__name__ for o in outcomes) == ["CouponDecision", "InvalidArgument"]
        assert [c.member_id for c in (await engine.store.wallet("m001", NOW)).coupons] == (
            ["m001"] if isinstance(outcomes[1], CouponDecision) else [])

    drive(engine, body)


def test_refusals_are_idempotent_too(make_engine: EngineFactory) -> None:
    engine = make_engine([member("m1", stage=LifecycleStage.ACTIVE)])

    async def body() -> None:
        first = await engine.decide_coupon("r1", "m1", Channel.STORE, "s1")
        assert not first.issued and first.reason == Rule.NOT_ELIGIBLE_TIER and first.offer_id == "beauty-20pct"
        second = await engine.decide_coupon("r1", "m1", Channel.STORE, "s1")
        assert second.replayed and second.decision_id == first.decision_id

    drive(engine, body)


def test_per_member_cap_holds_across_requests(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine(many_members(1), single_offer(tmp_path, "max_count = 100", cap=2))

    async def body() -> None:
        decisions = [await engine.decide_coupon(f"r{i}", "m000", Channel.APP, None) for i in range(4)]
        assert [d.issued for d in decisions] == [True, True, False, False]
        assert decisions[-1].reason == Rule.CAP_REACHED

    drive(engine, body)


def test_fatigue_cap_per_channel(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine(many_members(1), single_offer(tmp_path, "max_count = 100", cap=50),
                         fatigue={"pos": {"count": 2, "period_days": 7}})

    async def body() -> None:
        pos = [await engine.decide_coupon(f"r{i}", "m000", Channel.POS, "s1") for i in range(3)]
        assert [d.issued for d in pos] == [True, True, False]
        assert pos[-1].reason == Rule.FATIGUE_CAP
        assert (await engine.decide_coupon("app", "m000", Channel.APP, None)).issued

    drive(engine, body)


def test_holdout_members_never_get_the_offer_and_are_logged(make_engine: EngineFactory, tmp_path: Path) -> None:
    members = [m.member_id for m in many_members(60)]
    engine = make_engine(many_members(60), single_offer(tmp_path, "max_count = 100", holdout=0.3))

    async def body() -> dict[str, CouponDecision]:
        return {m: await engine.decide_coupon(f"r-{m}", m, Channel.APP, None) for m in members}

    decisions = drive(engine, body)
    held = {m for m in members if in_holdout("flash-5off", m, 0.3)}
    assert 5 < len(held) < 35
    assert {m for m, d in decisions.items() if not d.issued} == held
    assert {d.reason for m, d in decisions.items() if m in held} == {Rule.HOLDOUT}
    log = [r for r in engine.log.records() if r["type"] == "decide_coupon"]
    assert sum(r["reason"] == Rule.HOLDOUT for r in log) == len(held)
    assert all(r["catalogue_version"] and "scored" in r and "excluded" in r for r in log)


def test_dormant_member_in_winback_holdout_gets_another_offer(make_engine: EngineFactory) -> None:
    dormant = [member(f"d{i}", "basic", LifecycleStage.DORMANT) for i in range(100)]
    engine = make_engine(dormant)
    held = next(m.member_id for m in dormant if in_holdout("winback-15off60", m.member_id, 0.1))
    free = next(m.member_id for m in dormant if not in_holdout("winback-15off60", m.member_id, 0.1))

    async def body() -> None:
        assert (await engine.decide_coupon("h", held, Channel.APP, None)).offer_id != "winback-15off60"
        assert (await engine.decide_coupon("f", free, Channel.APP, None)).offer_id == "winback-15off60"

    drive(engine, body)
    record = next(r for r in engine.log.records() if r.get("request_id") == "h")
    assert {"offer_id": "winback-15off60", "rule": Rule.HOLDOUT} in record["excluded"]


def test_next_best_offer_records_contacts_only_when_shown(make_engine: EngineFactory) -> None:
    m = next(f"g{i}" for i in range(100) if not in_holdout("gold-gift-electronics", f"g{i}", 0.05))
    engine = make_engine([member(m, "gold", LifecycleStage.ACTIVE)])

    async def body() -> None:
        views = [await engine.next_best_offer(m, Channel.WEB, None, k=5) for _ in range(5)]  # page views
        ids = [s.offer.id for s in views[0].ranking.chosen]
        assert "gold-gift-electronics" in ids and all([s.offer.id for s in v.ranking.chosen] == ids for v in views)
        assert (await engine.store.contacts(m, NOW - 30 * 86_400)).count() == 0
        shown = await engine.next_best_offer(m, Channel.WEB, None, k=5, shown=True)
        assert [s.offer.id for s in shown.ranking.chosen] == ids
        assert (await engine.store.contacts(m, NOW - 30 * 86_400)).count() == len(ids)
        after = await engine.next_best_offer(m, Channel.WEB, None, k=5)
        assert "gold-gift-electronics" not in [s.offer.id for s in after.ranking.chosen]
        assert {e.offer_id: e.rule for e in after.ranking.excluded}["gold-gift-electronics"] == Rule.CAP_REACHED
        assert {e.offer_id for e in views[0].ranking.excluded} | set(ids) == {
            o.id for o in engine.catalogue.current().offers}
        records = [r for r in engine.log.records() if r["type"] == "next_best_offer"]
        assert [r["decision_id"] for r in records[-2:]] == [shown.decision_id, after.decision_id]
        assert records[0]["chosen"] == ids and records[0]["member"]["tier"] == "gold"
        with pytest.raises(NotFound, match="member_id"):
            await engine.next_best_offer("nobody", Channel.WEB, None, k=5)

    drive(engine, body)


def test_page_views_never_use_up_the_coupon_cap(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine(many_members(1), single_offer(tmp_path, "max_count = 100", cap=1))

    async def body() -> None:
        for _ in range(3):
            assert [s.offer.id for s in (await engine.next_best_offer("m000", Channel.APP, None, k=3)).ranking.chosen
                    ] == ["flash-5off"]
        assert (await engine.decide_coupon("r", "m000", Channel.APP, None)).issued

    drive(engine, body)


def test_out_of_stock_reads_live_stock_in_the_feature_store(make_engine: EngineFactory, redis_client,
                                                             redis_config: RedisConfig) -> None:


    m = next(f"k{i}" for i in range(100) if not in_holdout("kitchen-5off25", f"k{i}", 0.1))
    engine = make_engine([member(m)])

    def rules(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
        return {e.offer_id: e.rule for e in result.ranking.excluded}

    async def body() -> None:
        at_s1 = await engine.next_best_offer(m, Channel.POS, "s1", k=10)  # s1 holds no kitchen item
        assert rules(at_s1)["kitchen-5off25"] == Rule.OUT_OF_STOCK
        online = await engine.next_best_offer(m, Channel.APP, None, k=10)
        assert "kitchen-5off25" not in rules(online)
        sold_out = pa.table({"member_id": ["someone"], "anonymous_id": [None], "item_id": ["i4"], "channel": ["web"],
                             "event_type": ["purchase"], "store_id": [None], "quantity": [5], "price": [30.0],
                             "ts": [int(NOW)]}, schema=EVENT_SCHEMA)
        LiveUpdater(redis_client, redis_config, TierLadder(), LifecycleRules()).apply(sold_out)
        after = await engine.next_best_offer(m, Channel.APP, None, k=10)
        assert rules(after)["kitchen-5off25"] == Rule.OUT_OF_STOCK

    drive(engine, body)


def test_redeem_is_idempotent_and_books_spend(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine(many_members(2), single_offer(tmp_path, "max_count = 100"))

    async def body() -> None:
        d = await engine.decide_coupon("r", "m000", Channel.APP, None)
        with pytest.raises(NotFound, match="coupon_id"):
            await engine.redeem(d.coupon_id, "m001", 50.0)
        with pytest.raises(FailedPrecondition, match="minimum spend"):
            await engine.redeem(d.coupon_id, "m000", 10.0)
        results = await asyncio.gather(*(engine.redeem(d.coupon_id, "m000", 50.0) for _ in range(16)))
        assert sorted(r[0] for r in results) == [False] * 15 + [True]
        assert {r[1] for r in results} == {"flash-5off"}
        usage = await engine.store.usage("flash-5off")
        assert usage.redeemed == 1 and usage.spent_cents == 500
        assert len((await engine.store.wallet("m000", NOW)).by_status(CouponStatus.REDEEMED)) == 1

    drive(engine, body)
    assert sum(r["type"] == "redeem_coupon" for r in engine.log.records()) == 1


def test_catalogue_reload_takes_effect_in_the_engine(make_engine: EngineFactory, catalogue_path: Path) -> None:
    engine = make_engine([member("m", "platinum")])

    async def body() -> None:
        before = (await engine.next_best_offer("m", Channel.APP, None, k=10)).catalogue_version
        catalogue_path.write_text(EXAMPLE.read_text().replace('eligibility = { tiers = ["platinum"] }',
                                                              'eligibility = { tiers = ["gold"] }'))
        os.utime(catalogue_path, ns=(5, 5))
        after = await engine.next_best_offer("m", Channel.APP, None, k=10)
        assert after.catalogue_version != before
        assert {e.offer_id: e.rule for e in after.ranking.excluded}["double-points-platinum"] == Rule.NOT_ELIGIBLE_TIER

    drive(engine, body)


class FakeModel:
    """A model whose member likes skincare (i1) most and kitchen (i4) least: one factor per item, the
    member's factor is 1, so an item's score is its factor."""

    items = IdMap.from_ids(["i1", "i2", "i3", "i4", "i5"])
    item_factors = np.array([[0.9], [0.5], [0.3], [0.0], [0.2]], dtype=np.float32)

    def member_vector(self, member_id: str) -> np.ndarray | None:
        return np.ones(1, np.float32) if member_id == "fan" else None


def test_affinity_from_the_serving_model_ranks_targets(make_engine: EngineFactory) -> None:
    engine = make_engine([member("fan", "silver"), member("stranger", "silver")])
    engine.model = lambda: (FakeModel(), "model-7")

    async def body() -> None:
        fan = await engine.next_best_offer("fan", Channel.APP, None, k=10)
        assert not fan.degraded and fan.model_version == "model-7"
        scored = {s.offer.id: s for s in fan.ranking.scored}
        assert "score:affinity=0.800" in scored["beauty-20pct"].reasons
        assert "score:affinity=0.000" in scored["kitchen-5off25"].reasons
        stranger = await engine.next_best_offer("stranger", Channel.APP, None, k=10)
        assert "score:affinity=0.500" in {s.offer.id: s for s in stranger.ranking.scored}["beauty-20pct"].reasons

    drive(engine, body)
    assert [r["model_version"] for r in engine.log.records()] == ["model-7", "model-7"]


def test_affinity_among_the_reference_items_is_the_quantile_among_all_items() -> None:
    """A small catalogue is its own reference (exact); a large one is ranked among an even spread of
    `REFERENCE_ITEMS`, within a few standard errors of the exact quantile."""
    assert reference_rows(5).tolist() == [0, 1, 2, 3, 4]
    rng = np.random.default_rng(0)
    factors = rng.standard_normal((100_000, 16)).astype(np.float32)
    rows = reference_rows(len(factors))
    assert len(np.unique(rows)) == REFERENCE_ITEMS and rows[0] == 0 and rows[-1] == len(factors) - 1
    errors = []
    for _ in range(50):
        taste = rng.standard_normal(16).astype(np.float32)
        target = factors[rng.choice(len(factors), 300, replace=False)] @ taste
        exact = float(np.mean(factors @ taste < target.max()))
        errors.append(abs(affinity(factors[rows] @ taste, target) - exact))
    assert max(errors) < 0.03 and float(np.mean(errors)) < 0.01


def test_a_large_targets_candidate_items_give_its_affinity_and_the_same_best_offer() -> None:
    """A target of thousands of items is scored on its `TARGET_CANDIDATES` largest-norm items: on random
    factors (the benchmark's synthetic bundle) the affinity moves by less than the reference items' standard
    error, two targets whose affinities differ by more than that error keep their order, and a planted
    favourite is found exactly."""
    rng = np.random.default_rng(3)
    factors = rng.standard_normal((40_000, 32)).astype(np.float32)
    reference = factors[reference_rows(len(factors))]
    targets = [rng.choice(len(factors), size, replace=False) for size in (300, 2_000, 6_000, 12_000)]
    candidates = [candidate_rows(factors, t) for t in targets]
    assert np.array_equal(candidates[0], np.sort(targets[0]))  # a small target is kept whole
    assert all(len(c) == TARGET_CANDIDATES and set(c) <= set(t)
               for c, t in zip(candidates[1:], targets[1:], strict=True))
    errors, orders = [], []
    for _ in range(300):
        taste = rng.standard_normal(32).astype(np.float32)
        ref = reference @ taste
        exact = [affinity(ref, factors[t] @ taste) for t in targets]
        approx = [affinity(ref, factors[c] @ taste) for c in candidates]
        errors += [abs(a - e) for a, e in zip(approx, exact, strict=True)]
        orders += [(exact[i] > exact[j]) == (approx[i] > approx[j]) for i in range(4) for j in range(4)
                   if abs(exact[i] - exact[j]) > 0.008]
    assert float(np.mean(errors)) < 0.001 and max(errors) < 0.008
    assert len(orders) > 100 and all(orders)
    planted = factors.copy()
    favourite = targets[3][17]
    taste = rng.standard_normal(32).astype(np.float32)
    planted[favourite] = 3 * taste / np.linalg.norm(taste) * np.linalg.norm(planted, axis=1).max()
    assert favourite in candidate_rows(planted, targets[3])
    assert affinity(planted[reference_rows(len(planted))] @ taste,
                    planted[candidate_rows(planted, targets[3])] @ taste) == 1.0


def test_uplift_scores_keep_coupons_from_sure_things(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine([member("sure"), member("persuadable")], single_offer(tmp_path, "max_count = 100"))
    engine.uplift = UpliftScores(IdMap.from_ids(["sure", "persuadable"]), np.array([0.6, 0.04]),
                                 np.array([0.62, 0.45]), "uplift-1")

    async def body() -> None:
        sure = await engine.decide_coupon("a", "sure", Channel.APP, None)
        assert not sure.issued and sure.reason == Rule.NOT_WORTH_IT
        persuadable = await engine.decide_coupon("b", "persuadable", Channel.APP, None)
        assert persuadable.issued and "score:uplift=0.4100" in persuadable.detail

    drive(engine, body)
    assert {r["uplift_version"] for r in engine.log.records()} == {"uplift-1"}


def _engine_on(client: redis.asyncio.Redis, config: RedisConfig, path: Path, tmp_path: Path) -> OfferEngine:
    cfg = OfferConfig(catalogue_path=path, decision_log_dir=tmp_path / "d")
    return OfferEngine(cfg, CatalogueSource(path), AsyncFeatureReader(client, config), OfferStore(client, config),
                       DecisionLog(cfg.decision_log_dir), clock=lambda: NOW, default_budget_s=2.0)


@pytest.mark.parametrize("where", ["redis down", "nothing materialised"])
def test_no_member_state_degrades_next_best_offer_and_makes_decide_coupon_unavailable(
        where: str, tmp_path: Path, catalogue_path: Path, redis_config: RedisConfig) -> None:
    if where == "redis down":
        client = redis.asyncio.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    else:
        client = redis.asyncio.Redis.from_url(redis_config.url, socket_timeout=5)  # type: ignore[arg-type]
    engine = _engine_on(client, redis_config, catalogue_path, tmp_path)

    async def body() -> None:
        answer = await engine.next_best_offer("m", Channel.APP, None, k=3)
        assert answer.degraded and answer.ranking.chosen == [] and "member state unavailable" in answer.degraded_reason
        with pytest.raises(OmnirecError) as info:
            await engine.decide_coupon("r", "m", Channel.APP, None)
        assert info.value.grpc_status_code() == "UNAVAILABLE"  # retryable, with the same request_id

    drive(engine, body)


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

    async def body() -> None:
        previews = [await engine.next_best_offer(m.member_id, Channel.APP, None, k=1) for m in members]
        assert all(p.ranking.chosen for p in previews) and (await engine.store.usage("evening")).issued == 0
        shown = [bool((await engine.next_best_offer(m.member_id, Channel.APP, None, k=1, shown=True)).ranking.chosen)
                 for m in members]
        assert shown == [True, True, True, False, False, False]
        last = (await engine.next_best_offer("m005", Channel.APP, None, k=1)).ranking.excluded
        assert [e.rule for e in last] == [Rule.BUDGET_EXHAUSTED]
        assert (await engine.store.usage("evening")).issued == 3

    drive(engine, body)


def test_a_decision_is_one_read_and_one_write(make_engine: EngineFactory, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # On one Redis the engine's reads and scripts go on the hiredis pipelined connections (one write per
    # round trip); redis-py's connections are not used at all.
    engine = make_engine(many_members(3), single_offer(tmp_path, "max_count = 100", cap=50))
    round_trips: list[object] = []
    send = redis.asyncio.connection.AbstractConnection.send_packed_command
    send_one, send_many = pipelined._Protocol.send, pipelined._Protocol.send_many

    async def counted(self, command, check_health=True):  # type: ignore[no-untyped-def]
        round_trips.append(("redis-py", command))
        return await send(self, command, check_health)

    def counted_one(self, args):  # type: ignore[no-untyped-def]
        round_trips.append(args)
        return send_one(self, args)

    def counted_many(self, commands):  # type: ignore[no-untyped-def]
        round_trips.append(commands)
        return send_many(self, commands)

    async def count(call: Awaitable[object]) -> int:
        round_trips.clear()
        await call
        assert not [r for r in round_trips if r[0] == "redis-py"]
        return len(round_trips)

    async def body() -> None:
        await engine.decide_coupon("warm-up", "m000", Channel.APP, None)  # the pointer, scripts loaded once
        await engine.next_best_offer("m000", Channel.APP, None, k=3, shown=True)
        monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", counted)
        monkeypatch.setattr(pipelined._Protocol, "send", counted_one)
        monkeypatch.setattr(pipelined._Protocol, "send_many", counted_many)
        assert await count(engine.decide_coupon("r1", "m001", Channel.APP, None)) == 2  # read, issue script
        assert await count(engine.decide_coupon("r1", "m001", Channel.APP, None)) == 1  # a retry: the read only
        assert await count(engine.next_best_offer("m002", Channel.APP, None, k=3)) == 1  # a preview
        assert await count(engine.next_best_offer("m002", Channel.APP, None, k=3, shown=True)) == 2  # + show script

    drive(engine, body)
