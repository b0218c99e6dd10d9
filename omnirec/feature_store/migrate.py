"""Moves durable records from layout v1 (no hash tags) to v2 (`keys.DURABLE_VERSION`, tagged for Redis Cluster).

v1 named a durable record `{namespace}:v1:{entity}:{id}`; v2 names it `keys.Keys.durable(entity, id)`. Each
record is copied with `DUMP` / `RESTORE` (value and remaining TTL kept), which works across slots, then the
v1 key is deleted; a v2 key that already exists is never overwritten (the v1 record is kept and counted as a
conflict). Live-event dedup claims (`seen`) are not moved: v2 claims are per slot group, so they let v1 claims
expire (`dedup_ttl_s`) instead, and an event retried across the upgrade within that time is applied again.
Run it with the writers (service, materialisation) stopped; running it again moves nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.cluster import RedisCluster

from omnirec.feature_store.errors import redis_call
from omnirec.feature_store.keys import SEEN, Keys
from omnirec.feature_store.resp import node_clients


@dataclass(frozen=True)
class MigrationReport:
    moved: int
    skipped_claims: int
    """v1 dedup claims left to expire."""
    conflicts: int
    """v1 records kept because their v2 key already existed."""


def migrate_durable_v1(client: redis.Redis | RedisCluster, namespace: str, step: int = 1_000) -> MigrationReport:
    keys = Keys(namespace)
    prefix = f"{namespace}:v1:"
    moved = skipped = conflicts = 0
    with redis_call("migrate durable keys"):
        for node in node_clients(client):
            for raw in node.scan_iter(match=f"{prefix}*", count=step):
                old = raw.decode()
                entity, _, entity_id = old[len(prefix):].partition(":")
                if entity == SEEN or not entity_id:
                    skipped += entity == SEEN
                    continue
                value, pttl = client.dump(old), client.pttl(old)
                if value is None:  # expired meanwhile
                    continue
                try:
                    client.restore(keys.durable(entity, entity_id), max(pttl, 0), value)
                except redis.ResponseError as exc:
                    if "BUSYKEY" not in str(exc):
                        raise
                    conflicts += 1
                    continue
                client.delete(old)
                moved += 1
    return MigrationReport(moved, skipped, conflicts)
