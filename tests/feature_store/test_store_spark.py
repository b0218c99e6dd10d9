"""Materialisation on Spark writes to a Redis Cluster, from its executors, exactly what the local job writes,
and readers switch to it at the end."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from pyspark.sql import SparkSession
from redis.cluster import RedisCluster

from omnirec.bundle import BundleRegistry
from omnirec.domain import LifecycleRules, TierLadder
from omnirec.domain.member_lists import decode
from omnirec.domain.readers import MEMBERS_FILE, RetailData
from omnirec.domain.vocab import Col
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.materialize import LoadReport, Materializer, MemberListSource, compute_features
from omnirec.feature_store.reader import FeatureReader
from omnirec.feature_store.resp import node_clients
from omnirec.feature_store.spark import materialize_spark
from omnirec.spark.config import SparkConfig


@pytest.fixture
def redis_client(cluster_client: RedisCluster) -> RedisCluster:
    """The cluster only: the Spark job is the same code on one Redis, and the suite's time is precious."""
    return cluster_client


def _stored(client: redis.Redis, keys: Keys) -> dict[bytes, object]:
    """Every feature key of one generation and its value, `_ts` stamps removed."""
    out: dict[bytes, object] = {}
    for node in node_clients(client):
        for key in node.scan_iter(match=f"{keys.feature_ns}:*", count=1000):
            if node.type(key) == b"hash":
                out[key] = {f: v for f, v in node.hgetall(key).items() if f != b"_ts"}
            else:
                value = node.get(key)
                out[key] = value.rsplit(b"\x1f", 1)[0] if b":member:" in key else value
    return out


def _with_unknown_members(data_dir: Path, out: Path, n: int) -> list[str]:
    """A copy of the retailer (links to its files) whose member table has `n` more members, without events,
    whom the bundle does not know; returns their ids."""
    out.mkdir()
    for path in data_dir.iterdir():
        (out / path.name).symlink_to(path)
    members = pq.read_table(data_dir / MEMBERS_FILE)
    at = members.schema.get_field_index(Col.MEMBER_ID)
    extra = members.slice(0, n).set_column(at, members.schema.field(at),
                                           pa.array([f"new-{i}" for i in range(n)]))
    (out / MEMBERS_FILE).unlink()
    pq.write_table(pa.concat_tables([members, extra]), out / MEMBERS_FILE)
    return extra[Col.MEMBER_ID].to_pylist()


@pytest.mark.timeout(900)  # a dozen small Spark jobs: seconds each on a quiet machine, minutes on a busy one
def test_spark_materialisation_writes_what_the_local_job_writes(
        spark: SparkSession, redis_client: redis.Redis, store_config: RedisConfig, small_retail_dir: Path,
        bundle_root: Path, tmp_path: Path) -> None:
    """With the bundle's member lists too (member state in the store), which the executors write from the
    bundle folder, and empty entries for the members the bundle does not know."""
    config = store_config.model_copy(update={"recent_items": 20, "purchased_items": 50})
    unknown = _with_unknown_members(small_retail_dir, tmp_path / "retail", 2)
    features = compute_features(RetailData.read(tmp_path / "retail"), TierLadder(), LifecycleRules(),
                                recent_items=20, purchased_items=50)
    lists = MemberListSource.from_path(BundleRegistry(bundle_root).current_path(), 20)  # type: ignore[arg-type]
    local = Materializer(redis_client, config).load(features, member_lists=lists)
    summary = materialize_spark(tmp_path / "retail", config, SparkConfig(), TierLadder(), LifecycleRules(),
                                now=features.now, member_lists=lists)
    report: LoadReport = summary.load
    assert report.generation == local.generation + 1 and report.previous_generation == local.generation
    assert report.members == len(features.member_ids)
    keys = Keys(config.namespace)
    want, got = _stored(redis_client, keys.at(local.generation)), _stored(redis_client, keys.at(report.generation))
    assert len(got) == len(want) > 2 * len(features.member_ids) + len(lists.member_ids)
    tops = {k: v for k, v in got.items() if b":member_top:" in k}
    assert len(tops) == len(features.member_ids) == len(lists.member_ids) + len(unknown)
    empty = {k for k, v in tops.items() if decode(v).collaborative is None}  # type: ignore[arg-type]
    assert empty == {keys.at(report.generation).member_top(m).encode() for m in unknown}
    renamed = {k.replace(f"@{local.generation}:".encode(), f"@{report.generation}:".encode()): v
               for k, v in want.items()}
    assert got == renamed
    member = features.member_ids[0].as_py()
    assert FeatureReader(redis_client, config).read_request(member).generation == report.generation
