"""Request reads: explicit misses, identity resolution, and bad data or a dead Redis reported, not served."""

import asyncio
import os
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from omnirec.domain.errors import Unavailable
from omnirec.domain.readers import RetailData
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect, connect_async
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.materialize import BatchFeatures, LoadReport, Materializer
from omnirec.feature_store.model import PROFILE_FIELDS
from omnirec.feature_store.reader import AsyncFeatureReader, FeatureReader
from omnirec.feature_store.resp import node_clients


def test_unknown_member_and_item_are_explicit_misses(reader: FeatureReader) -> None:
    got = reader.read_request("no-such-member", item_ids=["no-such-item"], store_id="no-such-store")
    assert got.member is not None and got.profile is None
    assert got.recent_items == () and got.member.purchased_items == frozenset()
    assert got.items == {"no-such-item": None} and got.stock == {"no-such-item": 0}
    assert not got.in_stock("no-such-item") and got.store_id == "no-such-store"


def test_linked_anonymous_id_resolves_to_the_member(reader: FeatureReader, small_retail: RetailData,
                                                   features: BatchFeatures) -> None:
    anon, member = small_retail.identity_links.slice(0, 1).to_pylist()[0].values()
    got = reader.read_request(anonymous_id=anon, item_ids=["i000001"])
    assert got.member_id == member and got.resolved_from_anonymous and got.profile is not None
    assert list(got.recent_items) == features.recent_of(member)
    assert got.items["i000001"] is not None


def test_unlinked_anonymous_id_gets_its_own_recent_items(reader: FeatureReader, features: BatchFeatures) -> None:
    anon = features.anon_ids[int(features.anon_recent.owner[0])].as_py()
    got = reader.read_request(anonymous_id=anon)
    assert got.member_id is None and got.member is None and got.profile is None
    assert len(got.recent_items) >= 1 and got.recent_items == got.anonymous_recent_items


def test_request_needs_an_id(reader: FeatureReader) -> None:
    with pytest.raises(ValueError, match="member_id or an anonymous_id"):
        reader.read_request()


def test_nothing_materialised_is_reported(redis_client: redis.Redis, store_config: RedisConfig) -> None:
    with pytest.raises(FeatureStoreError, match="no materialised features"):
        FeatureReader(redis_client, store_config).read_request("m0000001")


def test_schema_mismatch_is_reported(redis_client: redis.Redis, store_config: RedisConfig,
                                     reader: FeatureReader) -> None:
    redis_client.hset(Keys(store_config.namespace).pointer(), "schema", 1)
    with pytest.raises(FeatureStoreError, match="schema v1, this reader expects v5"):
        reader.read_request("m0000001")


@pytest.mark.parametrize(("field", "value"), [("points", "lots"), ("lifecycle_stage", "sleepy"),
                                              ("consent_app", "yes"), ("recency_score", "9"), ("tier", "")])
def test_malformed_profile_value_is_reported(redis_client: redis.Redis, store_config: RedisConfig,
                                             loaded: LoadReport, reader: FeatureReader, field: str,
                                             value: str) -> None:
    key = Keys(store_config.namespace, loaded.generation).member("m0000001")
    fields = redis_client.get(key).decode().split("\x1f")
    fields[PROFILE_FIELDS.index(field)] = value
    redis_client.set(key, "\x1f".join(fields))
    with pytest.raises(FeatureStoreError, match=f"{key}: field '{field}'"):
        reader.read_request("m0000001")


def test_missing_field_and_wrong_type_are_reported(redis_client: redis.Redis, store_config: RedisConfig,
                                                   loaded: LoadReport, reader: FeatureReader) -> None:
    k = Keys(store_config.namespace, loaded.generation)
    redis_client.set(k.member("m0000001"), redis_client.get(k.member("m0000001")).decode().rsplit("\x1f", 1)[0])
    n = len(PROFILE_FIELDS)
    with pytest.raises(FeatureStoreError, match=f"malformed member record, {n - 1} fields instead of {n}"):
        reader.read_request("m0000001")
    redis_client.delete(k.recent("m0000002"))
    redis_client.rpush(k.recent("m0000002"), "i000001")
    with pytest.raises(FeatureStoreError, match="wrong type"):
        reader.read_request("m0000002")
    redis_client.hset(k.item("i000001"), "price", "-3")
    with pytest.raises(FeatureStoreError, match="price"):
        reader.read_request("m0000003", item_ids=["i000001"])


def test_closed_port_fails_fast_with_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = RedisConfig(url=f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.2, connect_timeout_s=0.2)
    started = time.perf_counter()
    with pytest.raises(Unavailable, match="feature store unavailable"):
        FeatureReader(connect(config), config).read_request("m1")
    assert time.perf_counter() - started < 1.0


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers: the hang a timeout must bound."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def test_silent_server_is_bounded_by_the_socket_timeout(silent_server: int) -> None:
    config = RedisConfig(url=f"redis://127.0.0.1:{silent_server}/0", socket_timeout_s=0.3, connect_timeout_s=0.3)
    started = time.perf_counter()
    with pytest.raises(Unavailable):
        FeatureReader(connect(config), config).read_request("m1")
    assert 0.25 < time.perf_counter() - started < 1.5
    assert Unavailable("x").grpc_status_code() == "UNAVAILABLE"


def test_unreachable_cluster_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = RedisConfig(url=f"redis+cluster://127.0.0.1:{port}", socket_timeout_s=0.2, connect_timeout_s=0.2)
    started = time.perf_counter()
    with pytest.raises(Unavailable):
        connect(config)
    assert time.perf_counter() - started < 3.0


def test_asyncio_reader_answers_exactly_as_the_sync_reader(redis_client: redis.Redis, store_config: RedisConfig,
                                                           loaded: LoadReport, reader: FeatureReader,
                                                           features: BatchFeatures, small_retail: RetailData) -> None:
    members = features.member_ids.to_pylist()[:30]
    anon = small_retail.identity_links["anonymous_id"][0].as_py()
    items = features.item_ids.to_pylist()[:10]

    async def read_all() -> list[object]:
        async_client = connect_async(store_config)
        try:
            r = AsyncFeatureReader(async_client, store_config)
            got: list[object] = [await r.read_request(m, item_ids=items, store_id="s0000") for m in members]
            got.append(await r.read_request(anonymous_id=anon))
            got.append((await r.in_stock(items, "s0000")).tolist())
            got.append([set(await r.purchased(m)) for m in members])
            return got
        finally:
            await async_client.aclose()

    want: list[object] = [reader.read_request(m, item_ids=items, store_id="s0000") for m in members]
    want += [reader.read_request(anonymous_id=anon), reader.in_stock(items, "s0000").tolist(),
             [set(w.member.purchased_items) for w in want[:len(members)]]]  # type: ignore[attr-defined]
    assert asyncio.run(read_all()) == want


def test_async_read_cut_by_its_deadline_leaves_no_stale_reply(redis_client: redis.Redis, store_config: RedisConfig,
                                                               loaded: LoadReport, reader: FeatureReader,
                                                               features: BatchFeatures) -> None:
    # The service bounds reads with asyncio.timeout: the cancelled read's reply must never be handed to
    # the next request on a reused connection.
    first, second = features.member_ids.to_pylist()[:2]
    want = reader.read_request(second)

    async def scenario() -> object:
        async_client = connect_async(store_config)
        try:
            r = AsyncFeatureReader(async_client, store_config)
            await r.read_request(first)
            for node in node_clients(redis_client):  # every primary holds every reply for 300 ms
                node.execute_command("CLIENT", "PAUSE", 300)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await r.read_request(first)
            return await r.read_request(second)
        finally:
            await async_client.aclose()

    assert asyncio.run(scenario()) == want


def test_purchased_reads_in_flight_together_each_get_their_own_and_a_cut_one_leaves_no_stale_reply(
        redis_client: redis.Redis, store_config: RedisConfig, loaded: LoadReport, reader: FeatureReader,
        features: BatchFeatures) -> None:
    # On one Redis these reads share one pipelined connection, answered in order: a read its deadline cut
    # must leave its reply to be dropped, never handed to the next read.
    members = features.member_ids.to_pylist()[:40]
    want = [dict(reader.read_request(m).member.purchased) for m in members]  # type: ignore[union-attr]

    async def scenario() -> tuple[list[dict[str, int]], dict[str, int]]:
        async_client = connect_async(store_config)
        r = AsyncFeatureReader(async_client, store_config)
        try:
            await r.purchased(members[0])
            together = [dict(p) for p in await asyncio.gather(*(r.purchased(m) for m in members))]
            for node in node_clients(redis_client):  # every primary holds every reply for 300 ms
                node.execute_command("CLIENT", "PAUSE", 300)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await r.purchased(members[0])
            return together, dict(await r.purchased(members[1]))
        finally:
            r.close()
            await async_client.aclose()

    together, after_cut = asyncio.run(scenario())
    assert together == want and after_cut == want[1]
    assert any(want)


def test_purchased_read_in_flight_when_redis_drops_the_connection_is_unavailable_and_the_next_reconnects(
        single_client: redis.Redis, features: BatchFeatures) -> None:
    # One Redis only: on a cluster the reads stay on redis-py's cluster client.
    config = RedisConfig(url=single_client.test_url, namespace=single_client.test_prefix,  # type: ignore[attr-defined]
                         recent_items=20, purchased_items=50, socket_timeout_s=2.0)
    Materializer(single_client, config).load(features)
    member = next(m for m in features.member_ids.to_pylist() if features.purchased_of(m))
    name = f"omnirec-reads-{os.getpid()}"

    def connection_ids() -> list[int]:
        return [int(c["id"]) for c in single_client.client_list() if c["name"] == name]

    async def scenario() -> tuple[str, dict[str, int], list[int], list[int]]:
        async_client = connect_async(config)
        r = AsyncFeatureReader(async_client, config)
        try:
            await r.purchased(member)
            before = connection_ids()
            single_client.execute_command("CLIENT", "PAUSE", 400, "WRITE")  # holds the EVAL, not CLIENT KILL
            in_flight = asyncio.ensure_future(r.purchased(member))
            await asyncio.sleep(0.05)
            for client_id in before:
                single_client.client_kill_filter(_id=client_id)
            with pytest.raises(Unavailable) as lost:
                await in_flight
            return str(lost.value), dict(await r.purchased(member)), before, connection_ids()
        finally:
            r.close()
            await async_client.aclose()

    lost, again, before, after = asyncio.run(scenario())
    assert "connection to Redis lost" in lost
    assert again == features.purchased_of(member)
    assert len(before) == 1 and len(after) == 1 and after != before
