"""Live updates: the batch job's rules applied event by event, deduplicated, identity-aware; on one Redis and
on a 3-master Redis Cluster (the feature-store fixtures run every test on both)."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pytest
import redis

from omnirec.domain import LifecycleRules, LifecycleStage, TierLadder
from omnirec.domain.lifecycle import DAY
from omnirec.domain.readers import RetailData
from omnirec.domain.schema import EVENT_SCHEMA
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.live import ClaimTaken, LiveUpdater
from omnirec.feature_store.materialize import BatchFeatures, LoadReport
from omnirec.feature_store.reader import FeatureReader


def events(*rows: dict[str, Any]) -> pa.Table:
    base = {"member_id": None, "anonymous_id": None, "item_id": None, "channel": "app", "event_type": "view",
            "store_id": None, "quantity": 1, "price": 0.0, "ts": 0}
    return pa.Table.from_pylist([base | r for r in rows], schema=EVENT_SCHEMA)


@pytest.fixture
def live(redis_client: redis.Redis, store_config: RedisConfig, loaded: LoadReport) -> LiveUpdater:
    return LiveUpdater(redis_client, store_config, TierLadder(), LifecycleRules())


def member_where(features: BatchFeatures, **want: str) -> str:
    for m in features.member_ids.to_pylist():
        p = features.profile_of(m)
        if all(p[f] == v for f, v in want.items()):
            return m
    raise AssertionError(f"no member with {want}")


def test_dormant_member_who_buys_is_reactivated(live: LiveUpdater, reader: FeatureReader,
                                                features: BatchFeatures) -> None:
    m = member_where(features, lifecycle_stage="dormant")
    ts = int(features.now + DAY)
    report = live.apply(events({"member_id": m, "item_id": "i000003", "event_type": "purchase", "channel": "pos",
                                "store_id": "s0000", "quantity": 1, "price": 10.0, "ts": ts}))
    assert (report.applied, report.members_updated) == (1, 1)
    p = reader.read_request(m).profile
    assert p is not None and p.lifecycle_stage is LifecycleStage.REACTIVATED
    assert p.last_purchase_ts == ts and p.prev_purchase_ts == float(features.profile_of(m)["last_purchase_ts"])
    assert p.activity[Channel.POS] == int(features.profile_of(m)["act_pos"]) + 1


def test_points_upgrade_the_tier_and_never_downgrade(live: LiveUpdater, reader: FeatureReader,
                                                     features: BatchFeatures) -> None:
    m = member_where(features, tier="basic")
    points = int(features.profile_of(m)["points"])
    live.apply(events({"member_id": m, "item_id": "i000004", "event_type": "purchase", "quantity": 2,
                       "price": 600.0, "ts": int(features.now) + 10}))
    p = reader.read_request(m).profile
    assert p is not None and p.points == points + 6_000
    assert p.tier == TierLadder().tier_for(points + 6_000) and TierLadder().rank(p.tier) >= 2
    live.apply(events({"member_id": m, "item_id": "i000005", "event_type": "return", "price": 600.0,
                       "ts": int(features.now) + 20}))
    p2 = reader.read_request(m).profile
    assert p2 is not None and (p2.tier, p2.points) == (p.tier, p.points)


def test_recent_items_are_distinct_bounded_and_newest_first(live: LiveUpdater, reader: FeatureReader,
                                                            store_config: RedisConfig) -> None:
    t0 = 1_800_000_000
    rows = [{"member_id": "m0000010", "item_id": f"i{j:06d}", "ts": t0 + j} for j in range(25)]
    rows.append({"member_id": "m0000010", "item_id": "i000020", "ts": t0 + 100, "event_type": "add_to_cart"})
    live.apply(events(*rows))
    got = reader.read_request("m0000010").recent_items
    assert len(got) == store_config.recent_items == 20
    assert got[:3] == ("i000020", "i000024", "i000023") and len(set(got)) == 20 and got[-1] == "i000005"


def test_retried_batch_is_not_double_counted(live: LiveUpdater, reader: FeatureReader, features: BatchFeatures,
                                             redis_client: redis.Redis, store_config: RedisConfig) -> None:
    m = "m0000011"
    batch = events({"member_id": m, "item_id": "i000001", "channel": "web", "ts": int(features.now) + 5},
                   {"member_id": m, "item_id": "i000002", "channel": "web", "ts": int(features.now) + 6})
    before = reader.read_request(m).profile
    assert before is not None
    assert live.apply(batch).applied == 2
    again = live.apply(batch)
    assert (again.applied, again.duplicates) == (0, 2)
    after = reader.read_request(m).profile
    assert after is not None and after.activity[Channel.WEB] == before.activity[Channel.WEB] + 2
    no_dedup = LiveUpdater(redis_client, store_config, TierLadder(), LifecycleRules(), dedup=False)
    assert no_dedup.apply(batch).applied == 2
    again_after = reader.read_request(m).profile
    assert again_after is not None and again_after.activity[Channel.WEB] == before.activity[Channel.WEB] + 4
    seen = list(redis_client.scan_iter(match=Keys(store_config.namespace).seen("*", "*"), count=1000))
    assert len(seen) == 2 and 0 < redis_client.ttl(seen[0]) <= store_config.dedup_ttl_s


def test_login_links_anonymous_browsing_to_the_member(live: LiveUpdater, reader: FeatureReader,
                                                      features: BatchFeatures) -> None:
    t = int(features.now) + 50
    live.apply(events({"anonymous_id": "anon-live-1", "item_id": "i000101", "ts": t},
                      {"anonymous_id": "anon-live-1", "item_id": "i000102", "ts": t + 1}))
    anon = reader.read_request(anonymous_id="anon-live-1")
    assert anon.member_id is None and anon.recent_items == ("i000102", "i000101")
    report = live.apply(events({"member_id": "m0000012", "anonymous_id": "anon-live-1", "item_id": "i000103",
                                "ts": t + 2}))
    assert report.links == 1
    got = reader.read_request(anonymous_id="anon-live-1")
    assert got.member_id == "m0000012" and got.resolved_from_anonymous
    assert {"i000101", "i000102", "i000103"} <= set(got.recent_items[:3])
    live.apply(events({"anonymous_id": "anon-live-1", "item_id": "i000104", "ts": t + 3}))
    assert reader.read_request("m0000012").recent_items[0] == "i000104"  # later anonymous events are credited


def test_link_api_credits_items_and_batch_links_resolve(live: LiveUpdater, reader: FeatureReader,
                                                        small_retail: RetailData) -> None:
    live.apply(events({"anonymous_id": "anon-live-2", "item_id": "i000201", "ts": 1_800_000_000}))
    assert live.link("anon-live-2", "m0000013") == 1
    assert reader.read_request("m0000013").recent_items[0] == "i000201"
    assert reader.read_request(anonymous_id="anon-live-2").anonymous_recent_items == ()
    anon, member = small_retail.identity_links.slice(3, 1).to_pylist()[0].values()
    live.apply(events({"anonymous_id": anon, "item_id": "i000202", "ts": 1_800_000_001}))
    assert reader.read_request(member).recent_items[0] == "i000202"


def test_purchase_decrements_stock_where_it_was_sold(live: LiveUpdater, reader: FeatureReader,
                                                     small_retail: RetailData) -> None:
    inv = small_retail.inventory.to_pylist()
    row = next(r for r in inv if r["store_id"] == "s0000" and r["quantity"] >= 3)
    live.apply(events({"member_id": "m0000014", "item_id": row["item_id"], "event_type": "purchase",
                       "channel": "pos", "store_id": "s0000", "quantity": 2, "price": 5.0, "ts": 1_800_000_000}))
    got = reader.read_request("m0000014", item_ids=[row["item_id"]], store_id="s0000")
    assert got.stock[row["item_id"]] == row["quantity"] - 2
    assert row["item_id"] in got.member.purchased_items  # type: ignore[union-attr]


def test_live_writes_carry_a_ttl_and_unknown_members_keep_recent_items_only(
        live: LiveUpdater, reader: FeatureReader, redis_client: redis.Redis, store_config: RedisConfig,
        loaded: LoadReport) -> None:
    report = live.apply(events({"member_id": "brand-new", "item_id": "i000001", "ts": 1_800_000_000}))
    assert report.members_updated == 0
    got = reader.read_request("brand-new")
    assert got.profile is None and got.recent_items == ("i000001",)
    k = Keys(store_config.namespace, loaded.generation)
    assert redis_client.ttl(k.recent("brand-new")) == -1  # no feature TTL configured: lives with its generation
    with_ttl = LiveUpdater(redis_client, store_config.model_copy(update={"feature_ttl_s": 600}), TierLadder(),
                           LifecycleRules())
    with_ttl.apply(events({"member_id": "m0000001", "item_id": "i000002", "ts": 1_800_000_000}))
    assert 0 < redis_client.ttl(k.recent("m0000001")) <= 600 and 0 < redis_client.ttl(k.member("m0000001")) <= 600


def test_live_write_keeps_the_grace_ttl_of_a_replaced_generation(
        live: LiveUpdater, reader: FeatureReader, redis_client: redis.Redis, store_config: RedisConfig,
        loaded: LoadReport) -> None:
    # A batch that read the pointer just before a switch writes into the old generation: the write must not
    # clear the grace TTL the switch gave that generation, or its keys would never expire.
    k = Keys(store_config.namespace, loaded.generation)
    for key in (k.member("m0000001"), k.recent("m0000001")):
        redis_client.expire(key, 500)
    live.apply(events({"member_id": "m0000001", "item_id": "i000003", "ts": 1_800_000_000}))
    assert reader.read_request("m0000001").recent_items[0] == "i000003"
    assert 0 < redis_client.ttl(k.member("m0000001")) <= 500 and 0 < redis_client.ttl(k.recent("m0000001")) <= 500


def test_activity_counters_add_up_across_concurrent_batches(
        live: LiveUpdater, reader: FeatureReader, redis_client: redis.Redis, store_config: RedisConfig) -> None:
    before = reader.read_request("m0000002").profile.activity[Channel.WEB]  # type: ignore[union-attr]
    batches = [events({"member_id": "m0000002", "item_id": f"i00000{j % 9 + 1}", "channel": "web",
                       "ts": 1_800_000_000 + j}) for j in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(live.apply, batches))
    after = reader.read_request("m0000002").profile.activity[Channel.WEB]  # type: ignore[union-attr]
    assert after == before + 40


def test_malformed_member_record_is_refused_not_rewritten(
        live: LiveUpdater, redis_client: redis.Redis, store_config: RedisConfig, loaded: LoadReport) -> None:
    key = Keys(store_config.namespace, loaded.generation).member("m0000003")
    redis_client.set(key, "gold\x1factive")
    with pytest.raises(FeatureStoreError, match="malformed member record"):
        live.apply(events({"member_id": "m0000003", "item_id": "i000001", "ts": 1_800_000_000}))
    assert redis_client.get(key) == b"gold\x1factive"


def test_a_plan_whose_claim_was_taken_meanwhile_writes_nothing(live: LiveUpdater, reader: FeatureReader) -> None:
    batch = events({"member_id": "m0000004", "item_id": "i000005", "channel": "web", "ts": 1_800_000_000},
                   {"member_id": "m0000004", "item_id": "i000006", "channel": "web", "ts": 1_800_000_001})
    plan = live.prepare(batch, ["a", "b"])
    assert plan.fresh == (True, True)
    live.apply(batch.slice(1), ["b"])  # a concurrent retry takes "b" first
    before = reader.read_request("m0000004").profile.activity[Channel.WEB]  # type: ignore[union-attr]
    with pytest.raises(ClaimTaken):
        live.commit(plan)
    assert reader.read_request("m0000004").profile.activity[Channel.WEB] == before  # type: ignore[union-attr]
    report = live.apply(batch, ["a", "b"])
    assert (report.applied, report.duplicates) == (1, 1)
    assert reader.read_request("m0000004").profile.activity[Channel.WEB] == before + 1  # type: ignore[union-attr]


def test_purchased_list_keeps_each_items_latest_time_newest_first_and_bounded(
        live: LiveUpdater, reader: FeatureReader, features: BatchFeatures, store_config: RedisConfig) -> None:
    m = next(m for m in features.member_ids.to_pylist() if features.purchased_of(m))
    stored = features.purchased_of(m)
    old_item = next(iter(stored))
    t = int(features.now) + 1_000

    def buy(item: str, ts: int) -> dict[str, Any]:
        return {"member_id": m, "item_id": item, "event_type": "purchase", "channel": "app", "ts": ts}

    live.apply(events(buy("i000201", t + 20), buy("i000202", t + 10)))
    live.apply(events(buy("i000201", t + 5)))  # a late event: the item does not look newer than it is
    live.apply(events(buy(old_item, t + 15)))
    got = reader.read_request(m).member
    assert got is not None
    assert list(got.purchased.items())[:3] == [("i000201", t + 20), (old_item, t + 15), ("i000202", t + 10)]
    assert len(got.purchased) == min(len(set(stored) | {"i000201", "i000202"}), store_config.purchased_items)
    assert list(got.purchased.values()) == sorted(got.purchased.values(), reverse=True)
    live.apply(events(*(buy(f"i{j:06d}", t + 100 + j) for j in range(store_config.purchased_items + 5))))
    got = reader.read_request(m).member
    assert got is not None and len(got.purchased) == store_config.purchased_items
    assert next(iter(got.purchased.items())) == (f"i{store_config.purchased_items + 4:06d}",
                                                 t + 104 + store_config.purchased_items)


def test_a_commit_cut_short_between_slots_is_completed_once_by_the_retry(
        live: LiveUpdater, reader: FeatureReader, small_retail: RetailData) -> None:
    """A purchase writes the member's keys and the store's stock: two slots on a cluster, two script calls.
    Only the first call lands (the client died); the retry applies the rest, and nothing twice."""
    inv = small_retail.inventory.to_pylist()
    row = next(r for r in inv if r["store_id"] == "s0001" and r["quantity"] >= 3)
    m = "m0000015"
    before = reader.read_request(m).profile.activity[Channel.POS]  # type: ignore[union-attr]
    batch = events({"member_id": m, "item_id": row["item_id"], "event_type": "purchase", "channel": "pos",
                    "store_id": "s0001", "quantity": 2, "price": 5.0, "ts": 1_800_000_000})
    plan = live.prepare(batch, ["cut-1"])
    assert len(plan.calls) == (2 if live.cluster else 1)
    live.commit(dataclasses.replace(plan, calls=plan.calls[:1]))
    live.apply(batch, ["cut-1"])
    again = live.apply(batch, ["cut-1"])
    assert (again.applied, again.duplicates) == (0, 1)
    got = reader.read_request(m, item_ids=[row["item_id"]], store_id="s0001")
    assert got.stock[row["item_id"]] == row["quantity"] - 2
    assert got.profile.activity[Channel.POS] == before + 1  # type: ignore[union-attr]
    assert row["item_id"] in got.member.purchased_items  # type: ignore[union-attr]
