"""Generations: a load is invisible until its switch, readers never mix generations, old ones expire."""

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import redis

from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.materialize import BatchFeatures, LoadReport, Materializer
from omnirec.feature_store.reader import FeatureReader, RequestFeatures

MARK = 987_654


def marked(features: BatchFeatures) -> BatchFeatures:
    """The same members with every member's points set to MARK and no purchases."""
    n = len(features.member_ids)
    profile = features.profile | {"points": pa.array([str(MARK)] * n)}
    return dataclasses.replace(features, profile=profile)


def consistent(got: RequestFeatures, first: int, points: dict[str, int]) -> bool:
    p = got.profile
    if p is None:
        return False
    return p.points == (points[p.member_id] if got.generation == first else MARK)


def test_readers_never_see_a_partial_or_mixed_load(redis_client: redis.Redis, store_config: RedisConfig,
                                                   features: BatchFeatures, loaded: LoadReport) -> None:
    config = store_config.model_copy(update={"batch_members": 100})  # ten flushes: a long window to race
    members = features.member_ids.to_pylist()[::97]
    stop = threading.Event()

    def read() -> list[RequestFeatures]:
        results = []
        client = connect(config)
        reader = FeatureReader(client, config)
        while not stop.is_set():
            results += [reader.read_request(m, item_ids=["i000001"]) for m in members]
        client.close()
        return results

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(read) for _ in range(3)]
        time.sleep(0.05)
        report = Materializer(redis_client, config).load(marked(features))
        time.sleep(0.1)
        stop.set()
        results = [r for f in futures for r in f.result()]  # re-raises a reader's exception here
    generations = {r.generation for r in results}
    assert generations == {loaded.generation, report.generation}
    points = dict(zip(features.member_ids.to_pylist(), map(int, features.profile["points"].to_pylist()), strict=True))
    assert all(consistent(r, loaded.generation, points) for r in results)
    # After the switch every reader is on the new generation.
    assert FeatureReader(redis_client, config).read_request(members[0]).profile.points == MARK  # type: ignore[union-attr]


def test_old_generation_gets_the_grace_ttl(redis_client: redis.Redis, store_config: RedisConfig,
                                           features: BatchFeatures, loaded: LoadReport) -> None:
    config = store_config.model_copy(update={"old_generation_ttl_s": 1})
    aborted = Keys(config.namespace, int(redis_client.incr(Keys(config.namespace).generation_counter())))
    redis_client.hset(aborted.member("half-written"), "tier", "basic")  # a load that died before its switch
    report = Materializer(redis_client, config).load(features)
    assert report.previous_generation == loaded.generation and report.generation == aborted.generation + 1
    old, new = Keys(config.namespace, loaded.generation), Keys(config.namespace, report.generation)
    assert report.old_keys_expired >= len(features.member_ids) + 1
    assert 0 < redis_client.ttl(old.member("m0000001")) <= 1
    assert 0 < redis_client.ttl(aborted.member("half-written")) <= 1
    assert redis_client.ttl(new.member("m0000001")) == -1  # current features live until the next switch
    time.sleep(1.1)
    assert not redis_client.exists(old.member("m0000001"), old.stock("online"), old.item("i000001"),
                                   aborted.member("half-written"))
    assert FeatureReader(redis_client, config).read_request("m0000001").profile is not None


def test_feature_keys_expire_after_their_ttl(redis_client: redis.Redis, store_config: RedisConfig,
                                             features: BatchFeatures) -> None:
    # 3 s, not 1: on a loaded machine the load and the first reads can outlast a 1 s TTL.
    config = store_config.model_copy(update={"feature_ttl_s": 3})
    report = Materializer(redis_client, config).load(features)
    k = Keys(config.namespace, report.generation)
    assert 0 < redis_client.ttl(k.member("m0000001")) <= 3 and 0 < redis_client.ttl(k.recent("m0000001")) <= 3
    reader = FeatureReader(redis_client, config)
    assert reader.read_request("m0000001").profile is not None
    time.sleep(3.1)
    got = reader.read_request("m0000001", item_ids=["i000001"])
    assert got.profile is None and got.recent_items == () and got.items == {"i000001": None}
    assert redis_client.exists(Keys(config.namespace).pointer())  # durable keys are not feature keys
