"""Recommend's intents on a real server and Redis: buy-again by due date, discover without bought items,
live purchases (TrackEvents) counted at once, MIXED unchanged for callers that do not set an intent."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pyarrow.compute as pc
import pytest
import redis
from google.protobuf import timestamp_pb2
from service_harness import API_KEYS, RunningServer, materialize, service_config

from omnirec.bundle import BundleRegistry, ModelBundle
from omnirec.bundle.format import INTENT_ARRAYS, Array, BundleArtifacts, Manifest, write_bundle
from omnirec.config import OmnirecConfig
from omnirec.domain.clock import DAY
from omnirec.domain.readers import RetailData
from omnirec.domain.vocab import Col, Intent
from omnirec.feature_store.config import RedisConfig
from omnirec.service.telemetry import _intent
from omnirec.v1 import common_pb2, events_pb2, events_pb2_grpc
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc

MD = (("x-api-key", API_KEYS["app"]),)
LIST_LENGTH = 20
_ids = itertools.count()


def _cycles(n_items: int) -> np.ndarray:
    """Distinct cycles (10 to 59.5 days), so "how due" orders every member's items strictly."""
    return (10.0 + (np.arange(n_items) % 100) / 2).astype(np.float32)


def _purchases(retail: RetailData, member_id: str) -> dict[str, float]:
    """Item -> last purchase time of one member, from the retailer's files."""
    ev = retail.events
    rows = ev.filter(pc.and_(pc.equal(ev[Col.MEMBER_ID], member_id), pc.equal(ev[Col.EVENT_TYPE], "purchase")))
    last: dict[str, float] = {}
    for item, ts in zip(rows[Col.ITEM_ID].to_pylist(), rows[Col.TS].to_pylist(), strict=True):
        last[item] = max(last.get(item, 0.0), float(ts))
    return last


@pytest.fixture(scope="session")
def lists_root(bundle_root: Path, retail: RetailData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session bundle plus intent lists and item cycles, as `omnirec train`'s ranker writes them: each
    member's bought items most due first (BUY_AGAIN), popular items they never bought (DISCOVER), and the
    two interleaved (MIXED)."""
    source = ModelBundle.load(BundleRegistry(bundle_root).current_path(), mmap=False)  # type: ignore[arg-type]
    n_members, n_items = len(source.members), len(source.items)
    cycles = _cycles(n_items)
    as_of = float(pc.max(retail.events[Col.TS]).as_py())
    popular = np.argsort(-np.asarray(source.arrays[Array.POPULARITY]), kind="stable")
    lists = {intent: np.full((n_members, LIST_LENGTH), -1, np.int32) for intent in Intent}
    for row, member in enumerate(source.members.external_ids.tolist()):
        bought = _purchases(retail, member)
        idx = source.items.to_internal(list(bought), strict=False)
        ts = np.array(list(bought.values()))
        due = np.argsort(-((as_of - ts) / DAY / cycles[idx]), kind="stable")
        again = idx[due][:LIST_LENGTH]
        new = popular[~np.isin(popular, idx)][:LIST_LENGTH]
        lists[Intent.BUY_AGAIN][row, :len(again)] = again
        lists[Intent.DISCOVER][row] = new
        mixed = [i for pair in itertools.zip_longest(again, new) for i in pair if i is not None][:LIST_LENGTH]
        lists[Intent.MIXED][row, :len(mixed)] = mixed
    arrays = dict(source.arrays) | {Array.ITEM_CYCLE_DAYS: cycles}
    for intent, (items, scores) in INTENT_ARRAYS.items():
        arrays[items] = lists[intent]
        arrays[scores] = np.tile(np.linspace(1.0, 0.0, LIST_LENGTH, dtype=np.float32), (n_members, 1))
    manifest = Manifest.model_validate(source.manifest.model_dump() | {
        "lists_as_of": datetime.fromtimestamp(as_of, UTC).isoformat()})
    root = tmp_path_factory.mktemp("intent-models")
    registry = BundleRegistry(root)
    write_bundle(BundleArtifacts(manifest, source.items, source.members, arrays, dict(source.sparse),
                                 dict(source.indexes)), registry.path(1))
    registry.publish(1)
    return root


@pytest.fixture(scope="session")
def plain_root(bundle_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session bundle without intent lists or item cycles, as bundles were before `omnirec train` wrote
    the ranker's lists (and as a retailer's older published bundle still is)."""
    source = ModelBundle.load(BundleRegistry(bundle_root).current_path(), mmap=False)  # type: ignore[arg-type]
    dropped = {Array.ITEM_CYCLE_DAYS, *(name for pair in INTENT_ARRAYS.values() for name in pair)}
    arrays = {name: array for name, array in source.arrays.items() if name not in dropped}
    manifest = Manifest.model_validate(source.manifest.model_dump() | {"lists_as_of": ""})
    root = tmp_path_factory.mktemp("plain-models")
    registry = BundleRegistry(root)
    write_bundle(BundleArtifacts(manifest, source.items, source.members, arrays, dict(source.sparse),
                                 dict(source.indexes)), registry.path(1))
    registry.publish(1)
    return root


@pytest.fixture(params=["lists", "no_lists"])
def any_server(request: pytest.FixtureRequest, small_retail_dir: Path, plain_root: Path, lists_root: Path,
               redis_config: RedisConfig, retail: RetailData, tmp_path: Path,
               redis_client: redis.Redis) -> Iterator[RunningServer]:
    """A server over the bundle with intent lists, and one over a bundle without them."""
    root = lists_root if request.param == "lists" else plain_root
    config = service_config(small_retail_dir, root, redis_config, tmp_path / "events")
    materialize(retail, config)
    running = RunningServer(config, retail)
    yield running
    running.stop()


@pytest.fixture
def lists_server(small_retail_dir: Path, lists_root: Path, redis_config: RedisConfig, retail: RetailData,
                 tmp_path: Path, redis_client: redis.Redis) -> Iterator[RunningServer]:
    config: OmnirecConfig = service_config(small_retail_dir, lists_root, redis_config, tmp_path / "events")
    materialize(retail, config)
    running = RunningServer(config, retail)
    yield running
    running.stop()


def recommend(server: RunningServer, intent: int | None = None, k: int = 10, **fields: object) -> rec.RecommendResponse:
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    request = rec.RecommendRequest(channel=common_pb2.CHANNEL_APP, k=k, **fields)  # type: ignore[arg-type]
    if intent is not None:
        request.intent = intent  # type: ignore[assignment]
    return stub.Recommend(request, metadata=MD, timeout=10)


def buy(server: RunningServer, member_id: str, item_id: str, seconds_ago: float = 60) -> None:
    """A purchase through TrackEvents, as a till would send it."""
    stub = events_pb2_grpc.EventServiceStub(server.channel)
    event = events_pb2.Event(event_id=f"intent-test-{next(_ids)}", member_id=member_id, item_id=item_id,
                             channel=common_pb2.CHANNEL_APP, event_type=events_pb2.EVENT_TYPE_PURCHASE,
                             quantity=1, price_minor_units=199,
                             event_time=timestamp_pb2.Timestamp(seconds=int(time.time() - seconds_ago)))
    reply = stub.TrackEvents(events_pb2.TrackEventsRequest(events=[event]), metadata=MD, timeout=10)
    assert reply.accepted == 1


def _most_due(server: RunningServer, member_id: str, cycles: np.ndarray, items: list[str]) -> list[str]:
    now = time.time()
    index = {item: i for i, item in enumerate(items)}
    ratio = {item: (now - ts) / DAY / cycles[index[item]] for item, ts in _purchases(server.retail, member_id).items()}
    return [item for item, r in sorted(ratio.items(), key=lambda p: -p[1]) if r >= 0.5]


def test_buy_again_orders_by_due_date_and_drops_an_item_bought_a_minute_ago(any_server: RunningServer,
                                                                            known_member: str) -> None:
    items = ModelBundle.load(BundleRegistry(any_server.config.train.bundle_root).current_path()).items  # type: ignore[arg-type]
    cycles = _cycles(len(items))
    reply = recommend(any_server, rec.INTENT_BUY_AGAIN, k=5, member_id=known_member)
    got = list(reply.items.item_ids)
    assert set(reply.items.reasons) == {common_pb2.REASON_BUY_AGAIN}
    if any_server.config.train.bundle_root.name.startswith("intent-models"):
        assert got == _most_due(any_server, known_member, cycles, items.external_ids.tolist())[:5]
    else:  # the bundle knows no repurchase cycles: most recent purchase first
        bought = _purchases(any_server.retail, known_member)
        assert got == sorted(bought, key=lambda i: -bought[i])[:5]
    buy(any_server, known_member, got[0])
    after = list(recommend(any_server, rec.INTENT_BUY_AGAIN, k=5, member_id=known_member).items.item_ids)
    if any_server.config.train.bundle_root.name.startswith("intent-models"):
        assert got[0] not in after and after[:4] == got[1:]
    else:  # without cycles nothing can be "not due": the fresh purchase is the most recent
        assert after[0] == got[0]


def test_discover_never_returns_a_bought_item_including_one_bought_live(any_server: RunningServer,
                                                                        known_member: str) -> None:
    bought = set(_purchases(any_server.retail, known_member))
    reply = recommend(any_server, rec.INTENT_DISCOVER, k=30, member_id=known_member)
    got = list(reply.items.item_ids)
    assert len(got) == 30 and not bought & set(got)
    assert common_pb2.REASON_EXCLUDED_PURCHASED in reply.info.applied_filters
    buy(any_server, known_member, got[0])
    after = list(recommend(any_server, rec.INTENT_DISCOVER, k=30, member_id=known_member).items.item_ids)
    assert got[0] not in after and not bought & set(after)


def test_discover_lists_move_toward_complements_of_a_new_purchase(lists_server: RunningServer,
                                                                  known_member: str, item_id: str) -> None:
    before = recommend(lists_server, rec.INTENT_DISCOVER, k=20, member_id=known_member)
    assert set(before.items.reasons) == {common_pb2.REASON_DISCOVER}
    new = next(i for i in lists_server.retail.items["item_id"].to_pylist()
               if i not in _purchases(lists_server.retail, known_member) and i not in before.items.item_ids)
    buy(lists_server, known_member, new)
    after = recommend(lists_server, rec.INTENT_DISCOVER, k=20, member_id=known_member)
    assert common_pb2.REASON_BASKET_COMPLEMENT in after.items.reasons and new not in after.items.item_ids


@pytest.fixture
def plain_server(small_retail_dir: Path, plain_root: Path, redis_config: RedisConfig, retail: RetailData,
                 tmp_path: Path, redis_client: redis.Redis) -> Iterator[RunningServer]:
    config: OmnirecConfig = service_config(small_retail_dir, plain_root, redis_config, tmp_path / "events")
    materialize(retail, config)
    running = RunningServer(config, retail)
    yield running
    running.stop()


def test_mixed_is_unchanged_for_callers_that_do_not_set_an_intent(plain_server: RunningServer,
                                                                  known_member: str) -> None:
    """On a bundle without lists, callers that do not set an intent get today's collaborative answer."""
    server = plain_server
    bundle = ModelBundle.load(BundleRegistry(server.config.train.bundle_root).current_path())  # type: ignore[arg-type]
    top, _ = bundle.member_top(known_member, 10)  # type: ignore[misc]
    unset = recommend(server, None, member_id=known_member)
    mixed = recommend(server, rec.INTENT_MIXED, member_id=known_member)
    assert list(unset.items.item_ids) == bundle.items.to_external(top).tolist() == list(mixed.items.item_ids)
    assert set(unset.items.reasons) == {common_pb2.REASON_COLLABORATIVE}


def test_mixed_serves_the_rankers_list_without_what_was_just_bought(lists_server: RunningServer,
                                                                    known_member: str) -> None:
    reply = recommend(lists_server, None, member_id=known_member)
    assert set(reply.items.reasons) == {common_pb2.REASON_NEXT_BASKET}
    first = reply.items.item_ids[0]
    buy(lists_server, known_member, first)
    assert first not in recommend(lists_server, rec.INTENT_MIXED, member_id=known_member).items.item_ids


def test_an_unknown_intent_is_invalid_argument_naming_the_field(server: RunningServer, known_member: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        recommend(server, 99, member_id=known_member)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("intent:")
    with pytest.raises(grpc.RpcError) as both:
        recommend(server, rec.INTENT_BUY_AGAIN, member_id=known_member, exclude_purchased=True)
    assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert both.value.details().startswith("exclude_purchased:")


def test_cold_member_buy_again_and_discover(any_server: RunningServer) -> None:
    member = f"cold-{next(_ids)}"
    items = any_server.retail.items["item_id"].to_pylist()
    empty = recommend(any_server, rec.INTENT_BUY_AGAIN, member_id=member)
    assert list(empty.items.item_ids) == [] and "no purchases" in empty.info.empty_reason
    buy(any_server, member, items[0], seconds_ago=60)
    buy(any_server, member, items[1], seconds_ago=25 * DAY)
    again = recommend(any_server, rec.INTENT_BUY_AGAIN, member_id=member)
    if any_server.config.train.bundle_root.name.startswith("intent-models"):
        # items[1]: 25 days of a 10.5-day cycle; items[0] bought a minute ago: not due
        assert list(again.items.item_ids) == [items[1]]
    else:
        assert list(again.items.item_ids) == [items[0], items[1]]
    assert set(again.items.reasons) == {common_pb2.REASON_BUY_AGAIN}
    discover = recommend(any_server, rec.INTENT_DISCOVER, k=20, member_id=member)
    assert len(discover.items.item_ids) == 20 and not {items[0], items[1]} & set(discover.items.item_ids)
    anonymous = recommend(any_server, rec.INTENT_BUY_AGAIN, anonymous_id=f"device-{next(_ids)}")
    assert list(anonymous.items.item_ids) == [] and "anonymous" in anonymous.info.empty_reason


def test_the_metrics_intent_label_names_the_intent() -> None:
    assert _intent(rec.RecommendRequest(intent=rec.INTENT_BUY_AGAIN)) == "buy_again"
    assert _intent(rec.RecommendRequest()) == "unspecified"
    assert _intent(events_pb2.TrackEventsRequest()) == "default"  # requests without the field
