"""Offers on a real 3-master Redis Cluster: the reservation protocol of `offers.store` (budget in the offer's
slot, coupon in the member's) never overspends a budget and never issues twice, under 64 concurrent
decisions, concurrent retries and a client killed at each step between reserve and confirm."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from cluster import LocalCluster
from redis.cluster import RedisCluster

from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.schema import EVENT_SCHEMA
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect_async
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.live import LiveUpdater
from omnirec.feature_store.reader import AsyncFeatureReader
from omnirec.offers.catalogue import CatalogueSource
from omnirec.offers.config import OfferConfig
from omnirec.offers.decision_log import DecisionLog
from omnirec.offers.engine import CouponDecision, OfferEngine
from omnirec.offers.policy import Rule, in_holdout
from omnirec.offers.store import OfferStore
from tests.offers.conftest import NOW, drive, materialise, member
from tests.offers.test_offer_engine import many_members, single_offer

RESERVATION_S = 30.0
OFFER = "flash-5off"
ClusterEngine = Callable[..., OfferEngine]


@pytest.fixture
def cluster_config(cluster_client: RedisCluster, redis_cluster: LocalCluster) -> RedisConfig:
    return RedisConfig(url=redis_cluster.url, namespace=cluster_client.test_prefix,  # type: ignore[attr-defined]
                       socket_timeout_s=5.0, connect_timeout_s=5.0)


@pytest.fixture
def make_cluster_engine(cluster_client: RedisCluster, cluster_config: RedisConfig, tmp_path: Path) -> ClusterEngine:
    """An engine whose reads and writes go to the cluster, with `members` materialised there."""
    def make(members: list, path: Path, clock: Callable[[], float] = lambda: NOW) -> OfferEngine:
        materialise(cluster_client, cluster_config, members)  # type: ignore[arg-type]
        cfg = OfferConfig(catalogue_path=path, decision_log_dir=tmp_path / "decisions", reservation_s=RESERVATION_S)
        client = connect_async(cluster_config)
        return OfferEngine(cfg, CatalogueSource(path, poll_seconds=0.0), AsyncFeatureReader(client, cluster_config),
                           OfferStore(client, cluster_config, reservation_s=cfg.reservation_s),
                           DecisionLog(cfg.decision_log_dir), clock=clock, default_budget_s=20.0)
    return make


def pending_holds(client: RedisCluster, namespace: str) -> int:
    return client.zcard(Keys(namespace).offer_holds(OFFER))  # type: ignore[no-any-return]


async def wallets(engine: OfferEngine, member_ids: list[str]) -> dict[str, list[str]]:
    return {m: [c.coupon_id for c in (await engine.store.wallet(m, NOW)).coupons] for m in member_ids}


def test_the_store_takes_the_cluster_protocol(make_cluster_engine: ClusterEngine, tmp_path: Path) -> None:
    engine = make_cluster_engine(many_members(1), single_offer(tmp_path, "max_count = 1"))
    assert engine.store.cluster


@pytest.mark.parametrize("budget, issued", [("max_count = 10", 10), ("max_money = 37.5", 7)])
def test_64_concurrent_decisions_never_overspend(make_cluster_engine: ClusterEngine, cluster_client: RedisCluster,
                                                 tmp_path: Path, budget: str, issued: int) -> None:
    members = many_members(64)
    engine = make_cluster_engine(members, single_offer(tmp_path, budget))
    ids = [m.member_id for m in members]

    async def body() -> None:
        decisions = await asyncio.gather(*(engine.decide_coupon(f"r{i}", m, Channel.POS, "s1", [], 50.0)
                                           for i, m in enumerate(ids)))
        got = [d for d in decisions if d.issued]
        assert len(got) == issued and len({d.coupon_id for d in got}) == issued
        assert {d.reason for d in decisions if not d.issued} == {Rule.BUDGET_EXHAUSTED}
        usage = await engine.store.usage(OFFER)
        assert (usage.issued, usage.reserved_cents) == (issued, issued * 500)
        held = await wallets(engine, ids)
        assert sum(map(len, held.values())) == issued

    drive(engine, body)
    assert pending_holds(cluster_client, cluster_client.test_prefix) == 0  # type: ignore[attr-defined]


def test_concurrent_retries_issue_once_per_request(make_cluster_engine: ClusterEngine, cluster_client: RedisCluster,
                                                   tmp_path: Path) -> None:
    """64 calls: 16 requests (16 members) sent 4 times each, all at once, against a budget of 10 coupons."""
    members = many_members(16)
    engine = make_cluster_engine(members, single_offer(tmp_path, "max_count = 10", cap=50))
    calls = [(f"req-{i % 16}", members[i % 16].member_id) for i in range(64)]

    async def body() -> None:
        decisions = await asyncio.gather(*(engine.decide_coupon(r, m, Channel.POS, "s1", [], 50.0) for r, m in calls))
        by_request: dict[str, set[tuple[str, bool, str]]] = {}
        for (r, _), d in zip(calls, decisions, strict=True):
            by_request.setdefault(r, set()).add((d.decision_id, d.issued, d.coupon_id))
        assert all(len(answers) == 1 for answers in by_request.values())  # every retry got the same decision
        issued = [next(iter(a)) for a in by_request.values() if next(iter(a))[1]]
        assert len(issued) == 10
        assert (await engine.store.usage(OFFER)).issued == 10
        held = await wallets(engine, [m.member_id for m in members])
        assert sorted(c for cs in held.values() for c in cs) == sorted(d[2] for d in issued)
        again = await engine.decide_coupon("req-0", members[0].member_id, Channel.POS, "s1", [], 50.0)
        assert again.replayed and (again.decision_id, again.issued, again.coupon_id) in by_request["req-0"]

    drive(engine, body)
    assert pending_holds(cluster_client, cluster_client.test_prefix) == 0  # type: ignore[attr-defined]


def test_a_request_id_is_bound_to_its_request_on_the_cluster(make_cluster_engine: ClusterEngine,
                                                             tmp_path: Path) -> None:
    engine = make_cluster_engine(many_members(2), single_offer(tmp_path, "max_count = 100", cap=50))

    async def body() -> None:
        outcomes = await asyncio.gather(engine.decide_coupon("S", "m000", Channel.APP, None),
                                        engine.decide_coupon("S", "m001", Channel.APP, None), return_exceptions=True)
        assert sorted(type(o).__name__ for o in outcomes) == ["CouponDecision", "InvalidArgument"]
        assert (await engine.store.usage(OFFER)).issued == 1

    drive(engine, body)


KILLED_CLIENT = """
import asyncio, os, signal, sys
from pathlib import Path
from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.schema import EVENT_SCHEMA
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect_async
from omnirec.feature_store.reader import AsyncFeatureReader
from omnirec.offers.catalogue import CatalogueSource
from omnirec.offers.config import OfferConfig
from omnirec.offers.decision_log import DecisionLog
from omnirec.offers.engine import OfferEngine
from omnirec.offers.store import OfferStore

url, namespace, catalogue, logs, step, now = sys.argv[1:]
config = RedisConfig(url=url, namespace=namespace, socket_timeout_s=5.0, connect_timeout_s=5.0)


async def main() -> None:
    client = connect_async(config)
    store = OfferStore(client, config)

    async def die(*args, **kwargs):  # the process dies right before this step reaches Redis
        os.kill(os.getpid(), signal.SIGKILL)

    store._scripts[step] = die
    cfg = OfferConfig(catalogue_path=Path(catalogue), decision_log_dir=Path(logs))
    engine = OfferEngine(cfg, CatalogueSource(Path(catalogue), poll_seconds=0.0), AsyncFeatureReader(client, config),
                         store, DecisionLog(Path(logs)), clock=lambda: float(now), default_budget_s=20.0)
    await engine.decide_coupon("killed", "m000", Channel.POS, "s1", [], 50.0)
    print("not killed")


asyncio.run(main())
"""


def kill_client_at(step: str, config: RedisConfig, catalogue: Path, tmp_path: Path) -> None:
    """Run a DecideCoupon for m000 (request id `killed`) in a subprocess that SIGKILLs itself at `step`."""
    done = subprocess.run([sys.executable, "-c", KILLED_CLIENT, str(config.url), config.namespace, str(catalogue),
                           str(tmp_path / "killed-log"), step, str(NOW)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stdout + done.stderr


@pytest.mark.parametrize("step, coupon_issued", [("member_issue", False), ("confirm", True)])
def test_a_client_killed_mid_decision_leaves_no_overspend(
        make_cluster_engine: ClusterEngine, cluster_client: RedisCluster, cluster_config: RedisConfig,
        tmp_path: Path, step: str, coupon_issued: bool) -> None:
    """Killed after reserving (before the coupon) its reservation is released; killed after the coupon (before
    the confirmation) its reservation is kept. Either way the one-coupon budget is spent at most once."""
    clock = [NOW]
    catalogue = single_offer(tmp_path, "max_count = 1", cap=50)
    engine = make_cluster_engine(many_members(2), catalogue, clock=lambda: clock[0])
    kill_client_at(step, cluster_config, catalogue, tmp_path)
    namespace = cluster_config.namespace
    assert pending_holds(cluster_client, namespace) == 1

    async def body() -> None:
        assert (await engine.store.usage(OFFER)).issued == 1  # held by the dead client
        held = await wallets(engine, ["m000"])
        assert len(held["m000"]) == int(coupon_issued)
        blocked = await engine.decide_coupon("other-1", "m001", Channel.POS, "s1", [], 50.0)
        assert not blocked.issued and blocked.reason == Rule.BUDGET_EXHAUSTED  # not yet abandoned
        clock[0] = NOW + RESERVATION_S + 1
        later = await engine.decide_coupon("other-2", "m001", Channel.POS, "s1", [], 50.0)
        assert later.issued is not coupon_issued  # the budget came back only if the dead client issued nothing
        assert (await engine.store.usage(OFFER)).issued == 1
        retry: CouponDecision = await engine.decide_coupon("killed", "m000", Channel.POS, "s1", [], 50.0)
        assert retry.issued is coupon_issued
        if coupon_issued:
            assert retry.replayed and [retry.coupon_id] == (await wallets(engine, ["m000"]))["m000"]
        assert (await engine.store.usage(OFFER)).issued == 1
        issued = await wallets(engine, ["m000", "m001"])
        assert sum(map(len, issued.values())) == 1

    drive(engine, body)
    assert pending_holds(cluster_client, namespace) == 0


def test_redeem_books_once_on_the_cluster(make_cluster_engine: ClusterEngine, tmp_path: Path) -> None:
    engine = make_cluster_engine(many_members(1), single_offer(tmp_path, "max_count = 10"))

    async def body() -> None:
        d = await engine.decide_coupon("r", "m000", Channel.POS, "s1", [], 50.0)
        results = await asyncio.gather(*(engine.redeem(d.coupon_id, "m000", 50.0) for _ in range(16)))
        assert sum(newly for newly, _ in results) == 1
        usage = await engine.store.usage(OFFER)
        assert (usage.redeemed, usage.spent_cents) == (1, 500)

    drive(engine, body)


def test_shown_invitations_spend_their_budget_on_the_cluster(make_cluster_engine: ClusterEngine,
                                                             tmp_path: Path) -> None:
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
    engine = make_cluster_engine(members, path)

    async def body() -> None:
        shown = await asyncio.gather(*(engine.next_best_offer(m.member_id, Channel.APP, None, k=1, shown=True)
                                       for m in members))
        assert sum(bool(s.ranking.chosen) for s in shown) == 3
        assert (await engine.store.usage("evening")).issued == 3
        contacts = [await engine.store.contacts(m.member_id, NOW - 1) for m in members]
        assert sorted(len(c.contacts) for c in contacts) == [0, 0, 0, 1, 1, 1]

    drive(engine, body)


def test_category_targets_read_live_stock_on_the_cluster(make_cluster_engine: ClusterEngine,
                                                         cluster_client: RedisCluster, cluster_config: RedisConfig,
                                                         catalogue_path: Path) -> None:
    """A category's item list and a store's stock are two slots: the in-stock check takes a second round trip."""
    m = next(f"k{i}" for i in range(100) if not in_holdout("kitchen-5off25", f"k{i}", 0.1))
    engine = make_cluster_engine([member(m)], catalogue_path)

    def rules(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
        return {e.offer_id: e.rule for e in result.ranking.excluded}

    async def body() -> None:
        assert rules(await engine.next_best_offer(m, Channel.POS, "s1", k=10))["kitchen-5off25"] == Rule.OUT_OF_STOCK
        assert "kitchen-5off25" not in rules(await engine.next_best_offer(m, Channel.APP, None, k=10))
        sold_out = pa.table({"member_id": ["someone"], "anonymous_id": [None], "item_id": ["i4"], "channel": ["web"],
                             "event_type": ["purchase"], "store_id": [None], "quantity": [5], "price": [30.0],
                             "ts": [int(NOW)]}, schema=EVENT_SCHEMA)
        LiveUpdater(cluster_client, cluster_config, TierLadder(), LifecycleRules()).apply(sold_out)
        after = await engine.next_best_offer(m, Channel.APP, None, k=10)
        assert rules(after)["kitchen-5off25"] == Rule.OUT_OF_STOCK
        decision = await engine.decide_coupon("cat-1", m, Channel.APP, None, ["i1"], 30.0)
        assert decision.reason != "" and (await engine.decide_coupon("cat-1", m, Channel.APP, None, ["i1"],
                                                                      30.0)).replayed

    drive(engine, body)
