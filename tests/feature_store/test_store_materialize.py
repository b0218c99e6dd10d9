"""Batch features and their load: what the batch computed is exactly what a reader gets back."""

import numpy as np
import pyarrow as pa
import pytest
import redis
from redis.crc import key_slot

from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.vocab import ONLINE_STORE
from omnirec.feature_store import resp
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.materialize import BatchFeatures, LoadReport, newest_distinct, quintile_scores
from omnirec.feature_store.model import PROFILE_FIELDS, TS
from omnirec.feature_store.reader import FeatureReader


def test_newest_distinct_keeps_latest_touch_newest_first_bounded() -> None:
    owner = np.array([0, 0, 0, 0, 1, 1, 0])
    item = np.array([5, 6, 5, 7, 5, 6, 8])
    ts = np.array([10, 20, 30, 25, 5, 5, 1])
    r = newest_distinct(owner, item, ts, limit=3)
    assert r.owner.tolist() == [0, 0, 0, 1, 1]
    assert r.item.tolist() == [5, 7, 6, 6, 5]  # owner 1: a tie in time goes to the larger item first
    assert r.ts.tolist() == [30, 25, 20, 5, 5]


def test_quintile_scores() -> None:
    value = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0])
    valid = np.r_[np.ones(10, bool), False]
    assert quintile_scores(value, valid).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 0]


def test_profile_round_trip_every_member(redis_client: redis.Redis, features: BatchFeatures,
                                         loaded: LoadReport, store_config: RedisConfig) -> None:
    k = Keys(store_config.namespace, loaded.generation)
    ids = features.member_ids.to_pylist()
    pipe = redis_client.pipeline(transaction=False)
    for m in ids:
        pipe.get(k.member(m))
        pipe.get(k.recent(m))
        pipe.get(k.purchased(m))
    replies = pipe.execute()
    for j, m in enumerate(ids):
        fields = replies[3 * j].decode().split("\x1f")  # the packed layout of FORMAT.md, spelled out
        assert len(fields) == len(PROFILE_FIELDS)
        stored = dict(zip(PROFILE_FIELDS, fields, strict=True))
        assert {f: v for f, v in stored.items() if f != TS} == features.profile_of(m)
        assert int(stored[TS]) > 0
        recent = replies[3 * j + 1]
        assert (recent.decode().split("\x1f") if recent else []) == features.recent_of(m)
        purchased = replies[3 * j + 2].decode().split("\x1f") if replies[3 * j + 2] else []
        want = features.purchased_of(m)  # (id, last purchase seconds) pairs, most recent first
        assert purchased == [v for item, ts in want.items() for v in (item, str(ts))]
        assert sorted(want.values(), reverse=True) == list(want.values())


def test_reader_returns_what_the_batch_computed(reader: FeatureReader, features: BatchFeatures,
                                                small_retail: object) -> None:
    rules = LifecycleRules()
    with_recent = [m for m in features.member_ids.to_pylist()[:200] if features.recent_of(m)][:40]
    assert with_recent
    items = features.item_ids.to_pylist()[:30]
    for m in with_recent:
        got = reader.read_request(m, item_ids=items)
        want = features.profile_of(m)
        p = got.profile
        assert p is not None and got.member_id == m and not got.resolved_from_anonymous
        assert (p.tier, p.lifecycle_stage.value, p.points) == (want["tier"], want["lifecycle_stage"],
                                                              int(want["points"]))
        assert p.stage_at(rules, features.now).value == want["lifecycle_stage"]
        assert (p.recency_score, p.frequency_score, p.monetary_score) == tuple(
            int(want[f]) for f in ("recency_score", "frequency_score", "monetary_score"))
        assert list(got.recent_items) == features.recent_of(m)
        assert got.member is not None and got.member.purchased == features.purchased_of(m)
        assert list(got.member.purchased) == list(features.purchased_of(m))
        assert p.preferred_channel is None or p.activity[p.preferred_channel] == max(p.activity.values())
    inventory = small_retail.inventory.filter(pa.compute.equal(small_retail.inventory["store_id"], ONLINE_STORE))  # type: ignore[attr-defined]
    online = dict(zip(inventory["item_id"].to_pylist(), inventory["quantity"].to_pylist(), strict=True))
    assert dict(got.stock) == {i: online.get(i, 0) for i in items}
    prices = dict(zip(features.item_ids.to_pylist(), features.items["price"].to_pylist(), strict=True))
    assert all(f is not None and f.price == float(prices[i]) for i, f in got.items.items())


def test_stock_queries_per_store(reader: FeatureReader, small_retail: object) -> None:
    inv = small_retail.inventory.to_pylist()  # type: ignore[attr-defined]
    store = next(r["store_id"] for r in inv if r["store_id"] != ONLINE_STORE)
    carried = {r["item_id"]: r["quantity"] for r in inv if r["store_id"] == store}
    assert reader.available_items(store) == {i for i, q in carried.items() if q > 0}
    ids = list(carried)[:50] + ["no-such-item"]
    assert reader.in_stock(ids, store).tolist() == [carried.get(i, 0) > 0 for i in ids]
    assert reader.in_stock([], store).shape == (0,)


def test_bulk_sender_reports_rejected_commands(redis_client: redis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}:a-string"
    redis_client.set(key, "x")
    keys = pa.array([key])
    with pytest.raises(FeatureStoreError, match="WRONGTYPE"), resp.BulkSender(redis_client) as sender:
        sender.send(keys, resp.hset(keys, {"f": pa.array(["v"])}))
    assert redis_client.ping()  # the broken connection was dropped, not returned to the pool


def test_resp_encoding_is_the_redis_protocol() -> None:
    keys = pa.array(["k1", "k2"])
    assert resp.hset(keys, {"f": pa.array(["é", "xy"]), "_ts": "9"}).to_pylist() == [
        "*6\r\n$4\r\nHSET\r\n$2\r\nk1\r\n$1\r\nf\r\n$2\r\né\r\n$3\r\n_ts\r\n$1\r\n9\r\n",
        "*6\r\n$4\r\nHSET\r\n$2\r\nk2\r\n$1\r\nf\r\n$2\r\nxy\r\n$3\r\n_ts\r\n$1\r\n9\r\n"]
    rows = resp.bulk(pa.array(["a", "b", "c"]))
    assert resp.grouped("RPUSH", keys, np.array([0, 2, 3]), rows, 1).to_pylist() == [
        "*4\r\n$5\r\nRPUSH\r\n$2\r\nk1\r\n$1\r\na\r\n$1\r\nb\r\n", "*3\r\n$5\r\nRPUSH\r\n$2\r\nk2\r\n$1\r\nc\r\n"]
    assert resp.split_groups(np.array([1, 1, 1, 2, 3, 3]), 2).tolist() == [0, 2, 3, 4, 6]


def test_key_slots_are_redis_clusters() -> None:
    """Whole-column slots equal redis-py's per-key `key_slot` (CRC16 of the hash tag, Redis's tag rules: the
    first `{`, the first `}` after it, an empty tag hashes the whole key), on edge cases and random keys
    dense in braces and multi-byte characters, and on a slice (an offset into the Arrow buffers)."""
    rng = np.random.default_rng(7)
    alphabet = np.array(list("ab{}{}:é日0"))
    keys = ["", "a", "{}", "{}x", "x{}", "}{a}", "{a}{b}", "a{b{c}d", "{", "}", "日本{語}", "{}{a}",
            Keys("omnirec", 7).member_top("m0000001"), Keys("omnirec").offer_budget("flash-5off"),
            *("".join(rng.choice(alphabet, rng.integers(0, 25))) for _ in range(3000))]
    want = [key_slot(k.encode()) for k in keys]
    assert resp.key_slots(pa.array(keys)).tolist() == want
    assert resp.key_slots(pa.array(keys).slice(7, 50)).tolist() == want[7:57]
    assert resp.key_slots(pa.array([], pa.string())).tolist() == []
