"""v1 durable records (no hash tags) move to the v2 layout with their values and TTLs, on one Redis and on a
3-master cluster; dedup claims are left to expire and an existing v2 record is never overwritten."""

import redis

from omnirec.feature_store.keys import Keys
from omnirec.feature_store.migrate import migrate_durable_v1


def test_v1_durable_records_move_to_v2_once(redis_client: redis.Redis, redis_prefix: str) -> None:
    ns, k = redis_prefix, Keys(redis_prefix)
    redis_client.hset(f"{ns}:v1:meta:pointer", mapping={"generation": "3", "schema": "5"})
    redis_client.hset(f"{ns}:v1:wallet:m1", "c1", '{"coupon_id":"c1"}')
    redis_client.expire(f"{ns}:v1:wallet:m1", 1_000)
    redis_client.zadd(f"{ns}:v1:contacts:m1", {'["d","o","app"]': 1_700_000_000})
    redis_client.hset(f"{ns}:v1:offer_budget:o1", mapping={"issued": "4", "reserved_cents": "2000"})
    redis_client.set(f"{ns}:v1:seen:event_id:e1", "1", ex=1_000)
    redis_client.set(f"{ns}:v1:identity:anon-1", "kept")
    redis_client.set(k.identity("anon-1"), "written after the upgrade")

    report = migrate_durable_v1(redis_client, ns)
    assert (report.moved, report.skipped_claims, report.conflicts) == (4, 1, 1)
    assert redis_client.hgetall(k.pointer()) == {b"generation": b"3", b"schema": b"5"}
    assert redis_client.hget(k.wallet("m1"), "c1") == b'{"coupon_id":"c1"}'
    assert 0 < redis_client.ttl(k.wallet("m1")) <= 1_000
    assert redis_client.zscore(k.contacts("m1"), '["d","o","app"]') == 1_700_000_000
    assert redis_client.ttl(k.offer_budget("o1")) == -1 and redis_client.hget(k.offer_budget("o1"), "issued") == b"4"
    assert redis_client.get(k.identity("anon-1")) == b"written after the upgrade"
    assert redis_client.get(f"{ns}:v1:identity:anon-1") == b"kept"
    assert redis_client.exists(f"{ns}:v1:wallet:m1", f"{ns}:v1:meta:pointer") == 0
    assert migrate_durable_v1(redis_client, ns).moved == 0
