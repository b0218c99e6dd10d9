"""Member state in the store: a materialisation copies the bundle's member lists into `member_top` keys and a
request reads them in its one round trip, on one Redis and on a 3-master cluster (`conftest.redis_client`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import redis

from omnirec.bundle import BundleRegistry, ModelBundle
from omnirec.bundle.format import MEMBER_ARRAYS
from omnirec.domain.member_lists import ListColumns
from omnirec.domain.vocab import Intent
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.materialize import BatchFeatures, Materializer, MemberListSource
from omnirec.feature_store.reader import FeatureReader, RequestFeatures


@pytest.fixture(scope="module")
def bundle(bundle_root: Path) -> ModelBundle:
    return ModelBundle.load(BundleRegistry(bundle_root).current_path())  # type: ignore[arg-type]


def _read(client: redis.Redis, reader: FeatureReader, **kwargs: Any) -> tuple[int, RequestFeatures]:
    """The read's result and how many round trips it took (the reader's own plan, executed here)."""
    plan, trips = reader.plans.read_request(**kwargs), 0
    try:
        batch = next(plan)
        while True:
            trips += 1
            batch.parse(batch.pipe.replay(client.pipeline(transaction=False)).execute())
            batch = next(plan)
    except StopIteration as done:
        return trips, done.value


@pytest.mark.parametrize("depth", [20, 80])
def test_a_members_lists_come_in_the_requests_round_trip(redis_client: redis.Redis, store_config: RedisConfig,
                                                        features: BatchFeatures, bundle: ModelBundle,
                                                        depth: int) -> None:
    """20: a slice of the bundle's precomputed 50; 80: deeper, searched in its member index."""
    Materializer(redis_client, store_config).load(features,
                                                  member_lists=MemberListSource.from_bundle(bundle, depth))
    reader = FeatureReader(redis_client, store_config)
    members = bundle.members.external_ids[[0, len(bundle.members) // 2, -1]].tolist()
    _read(redis_client, reader, member_id=members[0])  # the reader learns the generation once
    for member_id in members:
        trips, got = _read(redis_client, reader, member_id=member_id, member_top=True)
        plain_trips, plain = _read(redis_client, reader, member_id=member_id)
        assert trips == plain_trips == 1
        assert plain.member is not None and plain.member.top_lists is None
        assert got.member is not None and got.member.top_lists is not None
        assert got.member.purchased_items == plain.member.purchased_items and got.profile == plain.profile
        lists = got.member.top_lists
        assert lists.bundle_version == bundle.version and lists.collaborative is not None
        assert len(lists.collaborative.items) == depth
        expected = bundle.member_top(member_id, depth)
        assert expected is not None
        assert lists.collaborative.items.tolist() == expected[0].tolist()
        np.testing.assert_allclose(lists.collaborative.scores, expected[1], rtol=1e-6)
    stranger = reader.read_request("no-such-member", member_top=True)
    assert stranger.member is not None and stranger.member.top_lists is None


def test_intent_lists_and_an_anonymous_id_linked_to_the_member(redis_client: redis.Redis, store_config: RedisConfig,
                                                              features: BatchFeatures) -> None:
    members = features.member_ids.slice(0, 2)
    linked = features.links.slice(0, 1).to_pylist()[0]
    members = pa.concat_arrays([members, pa.array([linked["member_id"]])])
    items = np.array([[5, 3, -1], [2, -1, -1], [7, 8, 9]], np.int32)
    scores = np.arange(9, dtype=np.float32).reshape(3, 3)
    source = MemberListSource(12, members, lambda lo, hi: [
        ListColumns(None, items[lo:hi], scores[lo:hi]), ListColumns(Intent.BUY_AGAIN, items[lo:hi, ::-1],
                                                                    scores[lo:hi])])
    Materializer(redis_client, store_config).load(features, member_lists=source)
    reader = FeatureReader(redis_client, store_config)
    first = reader.read_request(members[0].as_py(), member_top=True).member
    assert first is not None and first.top_lists is not None and first.top_lists.bundle_version == 12
    assert first.top_lists.collaborative is not None and first.top_lists.collaborative.items.tolist() == [5, 3]
    assert first.top_lists.intents[Intent.BUY_AGAIN].items.tolist() == [3, 5]
    assert first.top_lists.intents[Intent.BUY_AGAIN].scores.tolist() == [1.0, 2.0]
    other = reader.read_request(features.member_ids[3].as_py(), member_top=True).member
    assert other is not None and other.profile is not None and other.top_lists is not None
    assert other.top_lists.bundle_version == 12 and other.top_lists.collaborative is None  # empty: unknown to it
    assert not other.top_lists.intents
    via_link = reader.read_request(anonymous_id=linked["anonymous_id"], member_top=True).member
    assert via_link is not None and via_link.top_lists is not None
    assert via_link.top_lists.collaborative is not None and via_link.top_lists.collaborative.items.tolist() == [7, 8, 9]


def test_a_malformed_value_is_reported_not_served(redis_client: redis.Redis, store_config: RedisConfig,
                                                 features: BatchFeatures, bundle: ModelBundle) -> None:
    report = Materializer(redis_client, store_config).load(features,
                                                           member_lists=MemberListSource.from_bundle(bundle, 20))
    member_id = str(bundle.members.external_ids[0])
    redis_client.set(Keys(store_config.namespace, report.generation).member_top(member_id), b"\x09garbage")
    with pytest.raises(FeatureStoreError, match="malformed member lists"):
        FeatureReader(redis_client, store_config).read_request(member_id, member_top=True)


def test_without_member_state_the_bundle_maps_nothing_that_grows_with_members(bundle_root: Path,
                                                                               bundle: ModelBundle) -> None:
    lean = ModelBundle.load(bundle.path, member_state=False)
    assert lean.members_in_store and len(lean.members) == 0 and lean.member_count == len(bundle.members)
    assert set(lean.arrays) == set(bundle.arrays) - MEMBER_ARRAYS and set(bundle.arrays) & MEMBER_ARRAYS
    member_id = str(bundle.members.external_ids[0])
    assert lean.member_top(member_id, 5) is None and lean.member_scores(member_id) is None
    assert len(lean.items) == len(bundle.items)
