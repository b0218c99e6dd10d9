"""The grpc-free ranking functions on a tiny hand-made bundle: fallbacks, filters and ordering."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from omnirec.bundle import Array, BundleRegistry
from omnirec.domain.errors import NotFound
from omnirec.domain.idmap import IdMap
from omnirec.domain.member_lists import MemberLists, TopList
from omnirec.domain.profile import ColdStartProfile
from omnirec.domain.topk import top_finite
from omnirec.domain.vocab import Channel, Intent
from omnirec.recommendations.ranking import CategoryIndex, Filters, MemberContext, Reason, basket, recommend, similar
from omnirec.service.bundles import load_serving_model

ITEMS = IdMap.from_ids([f"i{i}" for i in range(6)])
CATEGORIES = np.array(["home/kitchen", "home/bath", "toys", "home/kitchen", "toys/lego", "garden"])


@dataclass
class TinyBundle:
    items: IdMap = ITEMS
    members: IdMap = field(default_factory=lambda: IdMap.from_ids(["m1"]))
    top: tuple[np.ndarray, np.ndarray] | None = None
    """What `member_top` answers for m1 (None: no index, so ranking scores the catalogue)."""
    lists: dict[Intent, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """m1's precomputed intent lists (none by default)."""
    cycles: np.ndarray | None = None
    """Repurchase cycle of each item in days (None: the bundle has none)."""
    lists_as_of: float | None = None
    members_in_store: bool = False
    version: int = 1

    def member_scores(self, member_id: str) -> np.ndarray | None:
        return np.array([0.1, 0.9, 0.5, 0.8, 0.2, 0.3], dtype=np.float32) if member_id in self.members else None

    def member_top(self, member_id: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        if member_id not in self.members or self.top is None:
            return None
        return self.top[0][:n], self.top[1][:n]

    def cold_start_scores(self, profile: ColdStartProfile) -> np.ndarray:
        return np.array([0.6, 0.1, 0.2, 0.3, 0.4, 0.5], dtype=np.float32)

    def similar_items(self, item_id: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.array([self.items.get(item_id), 3, 0, 4, 2, 1, 5])[:k]
        return order, np.linspace(1, 0, len(order), dtype=np.float32)

    def popularity(self, channel: str | None = None, store_id: str | None = None) -> np.ndarray:
        return np.array([1, 2, 3, 4, 5, 6], dtype=np.float32)

    def basket_complements(self, item_ids: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.array([0, 5, 2, 1])[:k], np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32)[:k]

    def intent_top(self, member_id: str, intent: Intent, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        found = self.lists.get(intent) if member_id in self.members else None
        return None if found is None else (found[0][:n], found[1][:n])

    def cycle_days(self, idx: np.ndarray) -> np.ndarray:
        return np.full(len(idx), np.nan) if self.cycles is None else self.cycles[idx]


CATS = CategoryIndex.from_categories(CATEGORIES)


def test_known_member_gets_collaborative_order() -> None:
    ranked = recommend(TinyBundle(), CATS, MemberContext("m1"), Channel.APP, None, 3, Filters())
    assert ITEMS.to_external(ranked.idx).tolist() == ["i1", "i3", "i2"]
    assert set(ranked.reasons) == {Reason.COLLABORATIVE}


def test_cold_start_then_popularity() -> None:
    cold = MemberContext("new", ColdStartProfile(tier="basic"))
    ranked = recommend(TinyBundle(), CATS, cold, Channel.APP, None, 2, Filters())
    assert ranked.reasons == [Reason.CONTENT_COLD_START] * 2 and ranked.idx.tolist() == [0, 5]
    ranked = recommend(TinyBundle(), CATS, MemberContext(None), Channel.POS, "s1", 2, Filters())
    assert ranked.reasons == [Reason.POPULAR_IN_STORE] * 2 and ranked.idx.tolist() == [5, 4]


def test_category_prefix_and_purchased_filters() -> None:
    member = MemberContext("m1", purchased={"i3": 0.0})
    ranked = recommend(TinyBundle(), CATS, member, Channel.APP, None, 5,
                       Filters(category="home", exclude_purchased=True))
    assert ITEMS.to_external(ranked.idx).tolist() == ["i1", "i0"]
    assert ranked.applied == [Reason.CATEGORY_FILTER, Reason.EXCLUDED_PURCHASED]
    assert recommend(TinyBundle(), CATS, member, Channel.APP, None, 5, Filters(category="hom")).idx.size == 0


def test_similar_excludes_itself_and_unknown_is_not_found() -> None:
    ranked = similar(TinyBundle(), CATS, "i1", 3, Filters())
    assert 1 not in ranked.idx.tolist() and ranked.idx.tolist()[:2] == [3, 0]
    with pytest.raises(NotFound, match="item_id"):
        similar(TinyBundle(), CATS, "nope", 3, Filters())


def test_basket_drops_its_items_and_blends_taste() -> None:
    plain = basket(TinyBundle(), CATS, ["i0", "unknown"], None, 3, Filters())
    assert plain.idx.tolist() == [5, 2, 1]
    personal = basket(TinyBundle(), CATS, ["i0"], TinyBundle().member_scores("m1"), 3, Filters())
    assert personal.idx.tolist()[0] == 1
    with pytest.raises(NotFound, match="basket_item_ids"):
        basket(TinyBundle(), CATS, ["x", "y"], None, 3, Filters())


def test_index_fast_path_drops_purchased() -> None:
    indexed = TinyBundle(top=(np.array([1, 3, 2, 5, 0, 4]), np.linspace(1, 0, 6, dtype=np.float32)))
    member = MemberContext("m1", purchased={"i3": 0.0})
    ranked = recommend(indexed, CATS, member, Channel.APP, None, 3, Filters(exclude_purchased=True))
    assert ranked.idx.tolist() == [1, 2, 5] and ranked.applied == [Reason.EXCLUDED_PURCHASED]
    cold = recommend(indexed, CATS, MemberContext("new"), Channel.APP, None, 2, Filters())
    assert cold.reasons == [Reason.POPULAR_IN_CHANNEL] * 2


def test_index_search_matches_full_scoring_on_a_real_bundle(bundle_root: Path, small_retail_dir: Path) -> None:
    model = load_serving_model(BundleRegistry(bundle_root).current_path(), small_retail_dir)  # type: ignore[arg-type]
    for member_id in model.bundle.members.external_ids[:20].tolist():
        fast = recommend(model.bundle, model.categories, MemberContext(member_id), Channel.APP, None, 10, Filters())
        scores = model.bundle.member_scores(member_id)
        assert scores is not None
        full = top_finite(scores, 10)
        assert fast.idx.tolist() == full.tolist()
        np.testing.assert_allclose(fast.scores, scores[full], rtol=1e-4, atol=1e-5)


def test_member_top_reads_precomputed_rows_and_searches_beyond_them(bundle_root: Path,
                                                                    small_retail_dir: Path) -> None:
    model = load_serving_model(BundleRegistry(bundle_root).current_path(), small_retail_dir)  # type: ignore[arg-type]
    depth = model.bundle.arrays[Array.MEMBER_TOP_ITEMS].shape[1]
    member_id = str(model.bundle.members.external_ids[3])
    listed = model.bundle.member_top(member_id, depth)  # a row of the precomputed lists
    searched = model.bundle.member_top(member_id, depth + 5)  # deeper than the lists: the index is searched
    assert listed is not None and searched is not None and len(searched[0]) == depth + 5
    assert listed[0].tolist() == searched[0][:depth].tolist()
    np.testing.assert_allclose(listed[1], searched[1][:depth], rtol=1e-5)
    assert model.bundle.member_top("nobody", 10) is None


NEVER = CategoryIndex.from_categories(CATEGORIES, np.array([False, True, False, False, False, False]), ("toys",))


def test_never_recommend_items_and_categories_on_every_path() -> None:
    assert NEVER.never is not None and np.flatnonzero(NEVER.never).tolist() == [1, 2, 4]  # i1, toys, toys/lego
    scored = recommend(TinyBundle(), NEVER, MemberContext("m1"), Channel.APP, None, 3, Filters())
    assert scored.idx.tolist() == [3, 5, 0]
    indexed = TinyBundle(top=(np.array([1, 3, 2, 5, 0, 4]), np.linspace(1, 0, 6, dtype=np.float32)))
    fast = recommend(indexed, NEVER, MemberContext("m1"), Channel.APP, None, 3, Filters())
    assert fast.idx.tolist() == [3, 5, 0]
    nearest = similar(TinyBundle(), NEVER, "i0", 5, Filters())
    assert not set(nearest.idx.tolist()) & {1, 2, 4}
    assert CategoryIndex.from_categories(CATEGORIES).never is None


def test_never_recommend_from_config_and_zero_prices(bundle_root: Path, small_retail_dir: Path,
                                                     tmp_path: Path) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from omnirec.recommendations.config import RecommendationConfig

    items = pq.read_table(small_retail_dir / "items.parquet")
    first, free = str(items["item_id"][0]), str(items["item_id"][-1])
    prices = items["price"].to_numpy().copy()
    prices[-1] = 0.0  # a carrier bag
    pq.write_table(items.set_column(items.schema.get_field_index("price"), "price", [prices]),
                   tmp_path / "items.parquet")
    department = str(items["category"][1]).split("/")[0]
    rules = RecommendationConfig(never_items=(first,), never_categories=(department,), never_zero_price=True)
    model = load_serving_model(BundleRegistry(bundle_root).current_path(), tmp_path, rules)  # type: ignore[arg-type]
    banned = set(items.filter(pc.starts_with(items["category"], department))["item_id"].to_pylist()) | {first, free}
    assert model.categories.never is not None and model.categories.never[model.bundle.items.get(free)]
    for member_id in model.bundle.members.external_ids[:20].tolist():
        ranked = recommend(model.bundle, model.categories, MemberContext(member_id), Channel.APP, None, 10, Filters())
        got = set(model.bundle.items.external_ids[ranked.idx].tolist())
        assert len(got) == 10 and not got & banned


def test_a_stored_list_too_short_for_the_filters_is_topped_up_from_the_profile() -> None:
    """The replica cannot score the catalogue for the member: the list's items in the category come first,
    then content scores (the profile) fill the answer, never an item twice."""
    lists = MemberLists(1, TopList(np.array([1, 3, 2], np.int32), np.array([0.9, 0.8, 0.5], np.float32)), {})
    member = MemberContext("m1", ColdStartProfile(tier="basic"), purchased={"i3": 0.0}, lists=lists)
    lean = TinyBundle(members=IdMap.from_ids([]), members_in_store=True)
    ranked = recommend(lean, CATS, member, Channel.APP, None, 3, Filters(category="home", exclude_purchased=True))
    assert ITEMS.to_external(ranked.idx).tolist() == ["i1", "i0"]
    assert ranked.reasons == [Reason.COLLABORATIVE, Reason.CONTENT_COLD_START]
    assert ranked.applied == [Reason.CATEGORY_FILTER, Reason.EXCLUDED_PURCHASED]
    full = recommend(lean, CATS, member, Channel.APP, None, 4, Filters())
    assert ITEMS.to_external(full.idx).tolist() == ["i1", "i3", "i2", "i0"]
    assert full.reasons == [Reason.COLLABORATIVE] * 3 + [Reason.CONTENT_COLD_START]
