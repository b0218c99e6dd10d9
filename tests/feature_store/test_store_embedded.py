"""Embedded mode: with no URL omnirec runs its own redis-server on a file, so `make run` needs no server, and
whoever starts it stops it."""

import asyncio
import os
from pathlib import Path

import redis

from omnirec.domain import LifecycleRules, TierLadder
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect, connect_async
from omnirec.feature_store.embedded import embedded
from omnirec.feature_store.materialize import materialize
from omnirec.feature_store.reader import AsyncFeatureReader, FeatureReader


def _redis_children() -> list[int]:
    """Pids of redis-server processes this test process started (children, per /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split()
        except OSError:  # exited meanwhile
            continue
        if fields[1] == "(redis-server)" and int(fields[3]) == os.getpid():
            pids.append(int(fields[0]))
    return pids


def test_materialise_and_read_on_the_embedded_redis(small_retail_dir: Path, tmp_path: Path) -> None:
    config = RedisConfig(url=None, embedded_path=tmp_path / "redis.db", namespace="embedded")
    with embedded(config) as running:
        summary = materialize(small_retail_dir, running, TierLadder(), LifecycleRules())
        assert summary.load.members == 1_000 and summary.end_to_end_members_per_s > 0
        client = connect(running)
        try:
            got = FeatureReader(client, running).read_request("m0000001", item_ids=["i000001"])
            assert got.profile is not None and got.generation == summary.load.generation
            assert got.items["i000001"] is not None

            async def read_async() -> object:
                async_client = connect_async(running)
                try:
                    return await AsyncFeatureReader(async_client, running).read_request("m0000001",
                                                                                        item_ids=["i000001"])
                finally:
                    await async_client.aclose()

            assert asyncio.run(read_async()) == got  # the service's asyncio client reaches it too
        finally:
            client.close()
        with embedded(config) as second:  # a second user of the same file shares the running server
            assert second.url == running.url
        assert len(_redis_children()) == 1  # ... and leaves it to its owner
    assert _redis_children() == []  # the owner stopped it: nothing outlives the block
    with embedded(config) as again, redis.Redis.from_url(again.url or "") as client:  # saved to the file
        assert FeatureReader(client, again).read_request("m0000001").profile is not None
    assert _redis_children() == []
