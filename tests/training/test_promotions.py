"""Promotion features (`training.promotions`): only the predicted days' promotions, at the member's store as of
the cut-off; absent table -> constant columns and an unchanged ranker."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from omnirec.domain.clock import DAY
from omnirec.domain.readers import Interactions
from omnirec.domain.schema import PROMOTION_SCHEMA, check_promotions
from omnirec.domain.vocab import Col
from omnirec.training.baskets import Baskets, next_basket_split
from omnirec.training.config import TrainConfig
from omnirec.training.promotions import PROMOTION_FEATURES, RECENT_DAYS, Promotions, home_stores, price_cut
from omnirec.training.ranker import FEATURES, RankerData, build_context, candidates, fit_ranker
from tests.training.planted import planted_interactions

CONFIG = TrainConfig(als={"factors": 8, "regularization": 1.0, "alpha": 3.0, "iterations": 5},
                     ranker={"windows": 2, "window_days": 14, "n_estimators": 30, "n_jobs": 1})
PARAMS = CONFIG.ranker
STORES = ("s0", "s1", "s2")


def table(rows: list[tuple[str, str, int, int, bool, bool]]) -> pa.Table:
    """(item, store, first day, day after the last, display, mailer) rows, checked as the reader checks them."""
    columns = list(zip(*rows, strict=True))
    return check_promotions(pa.table({
        "item_id": pa.array(columns[0], pa.string()), "store_id": pa.array(columns[1], pa.string()),
        "start_ts": pa.array([d * DAY for d in columns[2]], pa.int64()),
        "end_ts": pa.array([d * DAY for d in columns[3]], pa.int64()),
        "display": pa.array(columns[4]), "mailer": pa.array(columns[5])}, schema=PROMOTION_SCHEMA), "test")


@pytest.fixture(scope="module")
def planted() -> tuple[Interactions, Baskets, int]:
    interactions = planted_interactions()
    baskets = Baskets.from_interactions(interactions)
    return interactions, baskets, next_basket_split(baskets, 14).cut_day


def features(interactions: Interactions, promos: pa.Table | None, cut: int, members: np.ndarray):
    baskets = Baskets.from_interactions(interactions)
    indexed = None if promos is None else Promotions.from_table(promos, interactions.items, baskets.store_names)
    return candidates(build_context(baskets, interactions, CONFIG, cut, PARAMS, promotions=indexed), members, PARAMS)


def column(cands, name: str) -> np.ndarray:
    return cands.features[:, FEATURES.index(name)]


def test_features_read_the_predicted_week_only_and_the_store_as_of_the_cutoff(planted):
    interactions, _, cut = planted
    members = np.arange(30)
    plain = features(interactions, None, cut, members)
    promoted = plain.item[plain.member == 0][0]  # member 0 shops at s0 (planted: store = member % 3)
    name = str(interactions.items.external_ids[promoted])
    week = [(name, "s0", cut + 1, cut + 8, True, False), (name, "s1", cut + 3, cut + 5, False, True),
            ("i001", "s2", cut + 1, cut + 8, True, True)]
    later = [(str(i), s, cut + PARAMS.promotion_days + 1, cut + 30, True, True)
             for i in interactions.items.external_ids[:40] for s in STORES]
    earlier = [(str(i), s, cut - 20, cut + 1, True, True) for i in interactions.items.external_ids[:40] for s in STORES]
    # After the cut-off member 0 shops at s1 only: a home store read from later purchases would be s1.
    ts = interactions.events[Col.TS]
    moved = interactions.events.filter(pc.equal(interactions.events[Col.MEMBER_ID], "m000"))
    moved = moved.set_column(moved.schema.get_field_index(Col.STORE_ID), Col.STORE_ID,
                             pa.array(["s1"] * moved.num_rows, pa.string()))
    moved = moved.set_column(moved.schema.get_field_index(Col.TS), Col.TS,
                             pc.add(pc.subtract(moved[Col.TS], pc.min(ts)), (cut + 1) * DAY))
    future = Interactions.from_events(pa.concat_tables([interactions.events.filter(pc.less(ts, (cut + 1) * DAY)),
                                                        moved.cast(interactions.events.schema)]),
                                      members=interactions.members,
                                      items=interactions.items)

    known = features(interactions, table(week), cut, members)
    leaky = features(future, table(week + later + earlier), cut, members)
    assert np.array_equal(known.item, leaky.item)
    np.testing.assert_allclose(known.features, leaky.features, rtol=1e-5, equal_nan=True)

    rows = known.item == promoted
    home_s0 = known.member[rows] % 3 == 0
    assert home_s0.any() and (~home_s0).any()
    np.testing.assert_array_equal(column(known, "promo_display")[rows], home_s0.astype(np.float32))
    np.testing.assert_array_equal(column(known, "promo_mailer")[rows], (known.member[rows] % 3 == 1))
    np.testing.assert_allclose(column(known, "promo_stores")[rows], 2 / 3)
    others = known.item != promoted
    assert not column(known, "promo_display")[others & (known.item != interactions.items.get("i001"))].any()
    # Without the later events and promotions ruled out, the same features would differ: the test can fail.
    assert not np.allclose(column(known, "promo_stores"),
                           column(features(interactions, table(week + [
                               (str(i), s, cut + 2, cut + 4, True, True) for i in interactions.items.external_ids[:40]
                               for s in STORES]), cut, members), "promo_stores"))


def test_home_store_is_the_store_of_most_baskets(planted):
    interactions, baskets, cut = planted
    home = home_stores(baskets.until(cut))
    names = baskets.store_names[home]
    expected = np.array([f"s{int(m[1:]) % 3}" for m in interactions.members.external_ids])
    np.testing.assert_array_equal(names, expected)


def test_without_a_table_the_columns_are_constant_and_the_ranker_trains(planted):
    interactions, baskets, cut = planted
    data = RankerData(baskets, interactions, CONFIG, promotions=None)
    model = fit_ranker(data, cut)
    assert model is not None
    window = data.window(cut - PARAMS.window_days)
    assert window is not None
    for name in PROMOTION_FEATURES:
        assert not window[0].features[:, FEATURES.index(name)].any()
    importance = dict(zip(model.mixed.feature_name(), model.mixed.feature_importance(), strict=True))
    assert all(importance[name] == 0 for name in PROMOTION_FEATURES)


def test_the_switch_turns_a_table_off(planted):
    interactions, baskets, cut = planted
    promos = table([(str(i), s, cut - 30, cut + 30, True, True)
                    for i in interactions.items.external_ids for s in STORES])
    for on in (False, True):
        config = TrainConfig(**{**CONFIG.model_dump(), "ranker": {**PARAMS.model_dump(), "promotions": on}})
        assert (RankerData(baskets, interactions, config, promotions=promos).promotions is not None) == on


def test_items_the_model_does_not_know_are_left_out(planted):
    interactions, baskets, cut = planted
    promos = Promotions.from_table(table([("i000", "s0", cut, cut + 7, True, False),
                                          ("not-sold", "s9", cut, cut + 7, True, False)]),
                                   interactions.items, baskets.store_names)
    assert promos.item.tolist() == [interactions.items.get("i000")] and promos.n_stores == 2


def test_price_cut_is_a_recent_markdown_before_the_cutoff(planted):
    interactions, _, cut = planted
    events = interactions.events
    day = pc.divide(events[Col.TS], DAY)
    item = pc.equal(events[Col.ITEM_ID], "i002")
    marked = pc.and_(item, pc.and_(pc.greater(day, cut - RECENT_DAYS), pc.less_equal(day, cut)))
    later = pc.and_(item, pc.greater(day, cut))
    price = pc.if_else(marked, pc.multiply(events[Col.PRICE], 0.5), events[Col.PRICE])
    halved = Interactions.from_events(events.set_column(events.schema.get_field_index(Col.PRICE), Col.PRICE, price),
                                      members=interactions.members, items=interactions.items)
    cheap_later = pc.if_else(later, pc.multiply(price, 0.1), price)
    halved_later = Interactions.from_events(
        events.set_column(events.schema.get_field_index(Col.PRICE), Col.PRICE, cheap_later),
        members=interactions.members, items=interactions.items)
    cuts = [price_cut(Baskets.from_interactions(i).until(cut), cut) for i in (interactions, halved, halved_later)]
    i002 = interactions.items.get("i002")
    assert not cuts[0].any()
    assert 0.2 < cuts[1][i002] < 0.5 and np.count_nonzero(cuts[1]) == 1
    np.testing.assert_array_equal(cuts[1], cuts[2])
