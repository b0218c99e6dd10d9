"""Bundle round trip: what the service loads scores exactly like the models that were trained."""

from __future__ import annotations

import numpy as np
import pytest

from omnirec.bundle import Array, Index, Manifest, ModelBundle, Sparse
from omnirec.bundle.format import INTENT_ARRAYS
from omnirec.domain.errors import NotFound
from omnirec.domain.profile import ColdStartProfile
from omnirec.domain.topk import top_k
from omnirec.domain.vocab import Intent
from omnirec.training.index import build_index, measure_recall, normalize
from omnirec.training.pipeline import TrainResult


@pytest.fixture(scope="module")
def bundle(trained: TrainResult) -> ModelBundle:
    return ModelBundle.load(trained.path)


def test_manifest_records_version_provenance_and_evaluation(bundle: ModelBundle, trained: TrainResult) -> None:
    m = Manifest.read(trained.path)
    assert m == bundle.manifest and m.version == bundle.version == trained.version
    assert m.created_at and len(m.data_fingerprint) == 64 and m.params["seed"] == 3 and m.library_versions
    assert m.metrics["als"]["ndcg@10"] >= 0 and m.complement_blend == m.params["complement_blend"]
    assert m.indexes[Index.ITEM]["kind"] == "exact_ip"
    assert not list(trained.path.glob("*.pkl"))


def test_catalogue_order_is_kept(bundle: ModelBundle, small_retail_dir) -> None:
    import pyarrow.parquet as pq

    items = pq.read_table(small_retail_dir / "items.parquet")["item_id"].to_pylist()
    assert bundle.items.external_ids.tolist() == items
    assert len(bundle.arrays[Array.ITEM_CONTENT]) == len(items)


def test_member_scores_round_trip(bundle: ModelBundle) -> None:
    member = str(bundle.members.external_ids[0])
    scores = bundle.member_scores(member)
    direct = bundle.arrays[Array.ITEM_FACTORS] @ bundle.arrays[Array.MEMBER_FACTORS][0]
    np.testing.assert_allclose(scores, direct, rtol=1e-5)
    assert bundle.member_scores("nobody") is None
    again = ModelBundle.load(bundle.path, mmap=False)
    assert top_k(again.member_scores(member)[None], 10).tolist() == top_k(scores[None], 10).tolist()


def test_member_index_matches_exact_search(bundle: ModelBundle) -> None:
    queries = np.ascontiguousarray(bundle.arrays[Array.MEMBER_FACTORS][:50])
    scores, found = bundle.indexes[Index.MEMBER].search(queries, 10)
    exact_scores = queries @ np.asarray(bundle.arrays[Array.ITEM_FACTORS]).T
    exact = top_k(exact_scores, 10)
    # equal up to float ties: same scores at every rank, and the same items almost everywhere
    np.testing.assert_allclose(scores, np.take_along_axis(exact_scores, exact, axis=1), rtol=1e-4, atol=1e-6)
    assert (found == exact).mean() > 0.95


def test_precomputed_member_top_lists_are_the_index_answer(bundle: ModelBundle) -> None:
    items, scores = bundle.arrays[Array.MEMBER_TOP_ITEMS], bundle.arrays[Array.MEMBER_TOP_SCORES]
    assert items.dtype == np.int32 and items.shape == (len(bundle.members), 50) and scores.shape == items.shape
    queries = np.ascontiguousarray(bundle.arrays[Array.MEMBER_FACTORS][:100])
    want_scores, want = bundle.indexes[Index.MEMBER].search(queries, 50)
    np.testing.assert_array_equal(items[:100], want)
    np.testing.assert_allclose(scores[:100], want_scores, rtol=1e-6)


def test_train_writes_the_rankers_intent_lists(bundle: ModelBundle, small_retail_dir) -> None:
    """Every intent's lists cover the member map row for row, `intent_top` reads them back, members without a
    purchase get empty rows, BUY_AGAIN lists only bought items and DISCOVER none."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    depth = bundle.manifest.params["ranker"]["list_depth"]
    for items, scores in INTENT_ARRAYS.values():
        assert bundle.arrays[items].shape == (len(bundle.members), depth) and bundle.arrays[items].dtype == np.int32
        assert bundle.arrays[scores].shape == (len(bundle.members), depth)
        assert bundle.arrays[scores].dtype == np.float32
    cycles = bundle.arrays[Array.ITEM_CYCLE_DAYS]
    assert cycles.shape == (len(bundle.items),) and cycles.dtype == np.float32 and np.isfinite(cycles).any()
    assert bundle.manifest.lists_as_of.startswith("20")
    events = pq.read_table(small_retail_dir / "events.parquet")
    purchases = events.filter(pc.equal(events["event_type"], "purchase"))
    buyers = set(purchases["member_id"].to_pylist())
    member_ids = [str(m) for m in bundle.members.external_ids]
    buyer = next(m for m in member_ids if m in buyers)
    row = bundle.members.get(buyer)
    for intent, (items, _) in INTENT_ARRAYS.items():
        found, found_scores = bundle.intent_top(buyer, intent, 10)
        want = np.asarray(bundle.arrays[items][row, :10])
        assert found.tolist() == want[want >= 0].tolist() and len(found) > 0
        assert np.all(np.diff(found_scores) <= 0)
    bought = set(bundle.items.to_internal(purchases.filter(pc.equal(purchases["member_id"], buyer))["item_id"]
                                          .to_pylist(), strict=False).tolist())
    assert set(bundle.intent_top(buyer, Intent.BUY_AGAIN, 50)[0].tolist()) <= bought
    assert not set(bundle.intent_top(buyer, Intent.DISCOVER, 50)[0].tolist()) & bought
    never = [m for m in member_ids if m not in buyers]
    assert never, "the simulated retailer has members without a purchase"
    assert all(len(bundle.intent_top(m, Intent.MIXED, 10)[0]) == 0 for m in never[:20])
    assert bundle.intent_top("nobody", Intent.MIXED, 10) is None


def test_similar_items_match_exact_search_and_exclude_the_item(bundle: ModelBundle) -> None:
    item = str(bundle.items.external_ids[5])
    idx, scores = bundle.similar_items(item, 5)
    assert 5 not in idx.tolist() and len(idx) == 5
    unit = np.asarray(bundle.arrays[Array.ITEM_CONTENT_UNIT])
    exact = unit @ unit[5]
    exact[5] = -np.inf
    assert idx.tolist() == top_k(exact[None], 5)[0].tolist()
    np.testing.assert_allclose(scores, exact[idx], rtol=1e-4)
    with pytest.raises(NotFound):
        bundle.similar_items("no-such-item", 5)


def test_hnsw_recall_is_measured() -> None:
    rng = np.random.default_rng(0)
    vectors = normalize(rng.normal(size=(3_000, 16)).astype(np.float32))
    index = build_index(vectors, exact_max=1_000, hnsw_m=16, ef_search=64)
    report = measure_recall(index, vectors, vectors[:200], 10)
    assert report.kind == "hnsw_ip"
    assert 0.9 <= report.recall_at_k <= 1.0
    assert measure_recall(build_index(vectors, exact_max=10_000), vectors, vectors[:50], 10).recall_at_k == 1.0


def test_cold_start_uses_profile_and_ignores_unknown_values(bundle: ModelBundle) -> None:
    gold = bundle.cold_start_scores(ColdStartProfile(tier="gold", lifecycle_stage="active", channel="app",
                                                     region="north"))
    assert gold.shape == (len(bundle.items),) and np.isfinite(gold).all()
    with_noise = bundle.cold_start_scores(ColdStartProfile(tier="gold", lifecycle_stage="active", channel="app",
                                                           region="north-by-northwest"))
    assert not np.allclose(gold, with_noise)
    without_region = bundle.cold_start_scores(ColdStartProfile(tier="gold", lifecycle_stage="active", channel="app"))
    np.testing.assert_allclose(with_noise, without_region)
    nothing = bundle.cold_start_scores(ColdStartProfile(tier="unobtainium"))
    np.testing.assert_allclose(nothing, bundle.arrays[Array.ITEM_CONTENT_BIAS])
    assert not np.allclose(gold, nothing)


def test_popularity_falls_back_to_overall(bundle: ModelBundle) -> None:
    overall = bundle.popularity()
    assert overall.shape == (len(bundle.items),)
    np.testing.assert_array_equal(bundle.popularity(channel="fax"), overall)
    np.testing.assert_array_equal(bundle.popularity(store_id="nowhere"), overall)
    app = bundle.popularity(channel="app")
    assert not np.array_equal(app, overall)
    store = str(bundle.arrays[Array.POPULARITY_STORE_IDS][0])
    assert not np.array_equal(bundle.popularity(channel="app", store_id=store), app)


def test_basket_complements_exclude_the_basket(bundle: ModelBundle) -> None:
    lift = bundle.sparse[Sparse.COMPLEMENTS]
    assert lift.nnz > 0
    item = int(np.argmax(np.diff(lift.indptr)))
    basket = [str(bundle.items.external_ids[item])]
    idx, scores = bundle.basket_complements(basket + ["unknown-item"], 5)
    assert item not in idx.tolist() and len(idx) == 5
    assert np.all(np.diff(scores) <= 0)
    best_partner = int(lift[item].indices[np.argmax(lift[item].data)])
    assert best_partner in idx.tolist()
    with pytest.raises(NotFound):
        bundle.basket_complements(["unknown-item"], 5)
