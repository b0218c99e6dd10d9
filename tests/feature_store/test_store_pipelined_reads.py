"""`AsyncFeatureReader(pipeline_every_read=True)` (the offers engine's reads): whole round trips of `GET`,
`HMGET` and `EVAL` on the pipelined connection answer exactly as redis-py's pipeline does, in order, also
with error replies and cut reads."""

import asyncio
import os

import pytest
import redis

from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect_async
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.materialize import BatchFeatures, LoadReport
from omnirec.feature_store.pipelined import PipelinedConnection
from omnirec.feature_store.reader import AsyncFeatureReader, Batch, FeatureReader, ItemSelection
from omnirec.feature_store.resp import node_clients


def test_a_request_read_on_the_pipelined_connection_answers_as_redis_py(
        redis_client: redis.Redis, store_config: RedisConfig, loaded: LoadReport, reader: FeatureReader,
        features: BatchFeatures) -> None:
    members = features.member_ids.to_pylist()[:30]
    categories = sorted(set(features.items["category"].to_pylist()))[:3]
    selections = [ItemSelection(item_ids=tuple(features.item_ids.to_pylist()[:2])),
                  ItemSelection(categories=tuple(categories)), ItemSelection(item_ids=("no-such-item",))]
    extra_key = f"{store_config.namespace}:extra"
    redis_client.set(extra_key, b"\x00raw\xffbytes")

    def extra(batch: Batch, _keys: Keys) -> None:
        batch.pipe.get(extra_key)
        batch.pipe.hmget(extra_key + ":none", ["a", "b"])
        batch.add(2, lambda r: got_extra.append(tuple(r)))

    got_extra: list[tuple[object, ...]] = []
    want = [reader.read_request(m, store_id="s0000", selections=selections, extra=extra, member_lists=False)
            for m in members]
    want_extra = list(got_extra)

    async def read_all() -> tuple[list[object], list[int]]:
        async_client = connect_async(store_config)
        r = AsyncFeatureReader(async_client, store_config, pipeline_every_read=True)
        try:
            got_extra.clear()
            got = list(await asyncio.gather(*(r.read_request(m, store_id="s0000", selections=selections,
                                                             extra=extra, member_lists=False) for m in members)))
            names = [c["name"] for c in redis_client.client_list()] if not store_config.cluster and \
                PipelinedConnection.supports(store_config) else []
            return got, [n == f"omnirec-reads-{os.getpid()}" for n in names]
        finally:
            r.close()
            await async_client.aclose()

    got, on_pipelined = asyncio.run(read_all())
    assert got == want
    assert sorted(got_extra) == sorted(want_extra) and want_extra[0] == (b"\x00raw\xffbytes", [None, None])
    assert any(w.profile is not None for w in want)  # type: ignore[attr-defined]
    if PipelinedConnection.supports(store_config):
        assert any(on_pipelined)  # the reads went on the pipelined connection


def test_an_error_reply_fails_its_read_and_the_next_read_gets_its_own_replies(
        redis_client: redis.Redis, store_config: RedisConfig, loaded: LoadReport, reader: FeatureReader,
        features: BatchFeatures) -> None:
    first, second = features.member_ids.to_pylist()[:2]
    wrong_type = f"{store_config.namespace}:a-hash"
    redis_client.hset(wrong_type, "f", "v")
    want = reader.read_request(second, member_lists=False)

    def bad(batch: Batch, _keys: Keys) -> None:
        batch.pipe.get(wrong_type)  # WRONGTYPE: a GET of a hash
        batch.add(1, lambda r: None)

    async def scenario() -> object:
        async_client = connect_async(store_config)
        r = AsyncFeatureReader(async_client, store_config, pipeline_every_read=True)
        try:
            with pytest.raises(FeatureStoreError, match="WRONGTYPE"):
                await r.read_request(first, extra=bad, member_lists=False)
            for node in node_clients(redis_client):  # every primary holds every reply for 300 ms
                node.execute_command("CLIENT", "PAUSE", 300)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await r.read_request(first, member_lists=False)
            return await r.read_request(second, member_lists=False)
        finally:
            r.close()
            await async_client.aclose()

    assert asyncio.run(scenario()) == want
