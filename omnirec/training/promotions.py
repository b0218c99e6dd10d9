"""Promotion features for the ranker: is the candidate on display, or in the mailer, at the member's store in
the days being predicted, at how many of the chain's stores, and is its price marked down now.

Leakage: every other feature at cut-off day c reads events up to day c only. Promotions are different in
kind: a retailer plans its displays and mailers weeks ahead, so the promotions running in the days the
ranker predicts, (c, c + `promotion_days`], are known at c, and only those are read. Promotions that start
later are never read, and the member's store comes from purchases up to c (`tests/training/
test_promotions.py` fails if a later week's promotion, or a later purchase, changes a feature).

A data directory without a promotions table (the simulator's) gives constant zero columns, which LightGBM
never splits on: training is unchanged. `RankerSettings.promotions = false` does the same with a table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from omnirec.domain.clock import DAY
from omnirec.domain.idmap import IdMap
from omnirec.training.baskets import Baskets

PROMOTION_FEATURES = ("promo_display", "promo_mailer", "promo_stores", "price_cut")
"""On display at the member's home store; in its mailer; share of the chain's stores promoting the item;
how far the item's price paid in the last `RECENT_DAYS` before the cut-off is below its mean."""
RECENT_DAYS = 14
"""The event log carries the unit price paid after discounts (no separate discount column): a mean over these
last days below the item's mean over the history is a markdown running now (Complete Journey: loyalty-card
and coupon discounts are in `sales_value`)."""


def _codes(column: pa.ChunkedArray, known: np.ndarray) -> np.ndarray:
    """int32 position of each row's id in `known` (-1 where absent), looked up once per distinct id."""
    array = column.combine_chunks()
    if not len(array):
        return np.zeros(0, np.int32)
    at = pc.index_in(array.dictionary, value_set=pa.array(known.astype(str), pa.string()))
    per_value = pc.fill_null(at, -1).to_numpy(zero_copy_only=False).astype(np.int32)
    return per_value[array.indices.to_numpy(zero_copy_only=False)]


@dataclass(frozen=True)
class Promotions:
    """A promotions table (`domain.schema.PROMOTION_SCHEMA`) indexed like the baskets: one entry per row
    whose item the model knows (others can never be a candidate). 32-bit columns: 20.9M rows take 460 MB."""

    item: np.ndarray
    """int32 item index."""
    store: np.ndarray
    """int32 index into `Baskets.store_names`; -1 for a store no purchase names (never a home store)."""
    store_code: np.ndarray
    """int32 distinct-store number within the table (counts stores for `promo_stores`)."""
    start_day: np.ndarray
    """int32 unix day of the first day it runs."""
    end_day: np.ndarray
    """int32 unix day after the last day it runs."""
    display: np.ndarray
    mailer: np.ndarray
    n_stores: int

    @classmethod
    def from_table(cls, table: pa.Table, items: IdMap, store_names: np.ndarray) -> Promotions:
        """Index a table as `domain.readers.read_promotions` returns it (dictionary-encoded ids)."""
        item = _codes(table["item_id"], items.external_ids)
        store = _codes(table["store_id"], store_names)
        stores = table["store_id"].combine_chunks()
        code = stores.indices.to_numpy(zero_copy_only=False).astype(np.int32) if len(stores) else item[:0]
        keep = item >= 0
        start = table["start_ts"].to_numpy()
        end = table["end_ts"].to_numpy()
        return cls(item=item[keep], store=store[keep], store_code=code[keep],
                   start_day=(start // DAY).astype(np.int32)[keep],
                   end_day=((end - 1) // DAY + 1).astype(np.int32)[keep],
                   display=table["display"].to_numpy(zero_copy_only=False)[keep],
                   mailer=table["mailer"].to_numpy(zero_copy_only=False)[keep],
                   n_stores=len(stores.dictionary) if len(stores) else 0)


@dataclass(frozen=True)
class PromotionWeek:
    """What runs in the predicted days at each (store, item), and each member's home store."""

    keys: np.ndarray
    """Sorted store * n_items + item of the (store, item) pairs promoted in those days."""
    display: np.ndarray
    mailer: np.ndarray
    store_share: np.ndarray
    """Per item, the share of the table's stores promoting it in those days."""
    price_cut: np.ndarray
    """Per item, 1 - (mean price paid in the last `RECENT_DAYS`) / (mean over the history); 0 where either is
    missing."""
    home: np.ndarray
    """Per member, the store index of most of their baskets up to the cut-off (-1: none)."""
    n_items: int


def home_stores(history: Baskets) -> np.ndarray:
    """Each member's store of most baskets (ties: the lower store index); -1 for members without one."""
    first = np.ones(len(history), bool)
    first[1:] = history.basket[1:] != history.basket[:-1]
    first &= history.store >= 0
    visits = sp.csr_matrix((np.ones(int(first.sum()), np.float32), (history.member[first], history.store[first])),
                           shape=(history.n_members, max(len(history.store_names), 1)))
    home = np.asarray(visits.argmax(axis=1)).ravel().astype(np.int64)
    home[np.diff(visits.indptr) == 0] = -1
    return home


def promotion_week(promotions: Promotions, history: Baskets, cut_day: int, days: int) -> PromotionWeek:
    """The promotions running on any day in (cut_day, cut_day + days]; `history` must end at `cut_day`."""
    n_items = history.n_items
    on = (promotions.start_day <= cut_day + days) & (promotions.end_day > cut_day + 1)
    item = promotions.item[on].astype(np.int64)
    store, code = promotions.store[on].astype(np.int64), promotions.store_code[on].astype(np.int64)
    display, mailer = promotions.display[on], promotions.mailer[on]
    pairs = np.unique(code * n_items + item)
    share = np.bincount(pairs % n_items, minlength=n_items) / max(promotions.n_stores, 1)
    at_known = store >= 0
    key = store[at_known] * n_items + item[at_known]
    order = np.argsort(key, kind="stable")
    key, display, mailer = key[order], display[at_known][order], mailer[at_known][order]
    keys, starts = np.unique(key, return_index=True)
    if len(keys):
        display = np.logical_or.reduceat(display, starts)
        mailer = np.logical_or.reduceat(mailer, starts)
    return PromotionWeek(keys=keys, display=display[:len(keys)], mailer=mailer[:len(keys)],
                         store_share=share.astype(np.float32), price_cut=price_cut(history, cut_day),
                         home=home_stores(history), n_items=n_items)


def price_cut(history: Baskets, cut_day: int) -> np.ndarray:
    """Per item, how far its mean price paid in the `RECENT_DAYS` up to `cut_day` is below its mean over
    `history` (float32; 0 where the item has no recent purchase or no price)."""
    n = history.n_items
    recent = history.day > cut_day - RECENT_DAYS
    overall = np.bincount(history.item, weights=history.price, minlength=n)
    count = np.bincount(history.item, minlength=n)
    now = np.bincount(history.item[recent], weights=history.price[recent], minlength=n)
    count_now = np.bincount(history.item[recent], minlength=n)
    usual = overall / np.maximum(count, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cut = np.where((count_now > 0) & (usual > 0), 1.0 - now / np.maximum(count_now, 1) / usual, 0.0)
    return cut.astype(np.float32)


def promotion_columns(week: PromotionWeek | None, member: np.ndarray, item: np.ndarray) -> dict[str, np.ndarray]:
    """The `PROMOTION_FEATURES` of (member, item) pairs; zeros without promotions."""
    if week is None:
        zero = np.zeros(len(item), np.float32)
        return {name: zero for name in PROMOTION_FEATURES}
    home = week.home[member]
    key = home * week.n_items + item
    at = np.minimum(np.searchsorted(week.keys, key), max(len(week.keys) - 1, 0))
    found = (home >= 0) & (week.keys[at] == key) if len(week.keys) else np.zeros(len(item), bool)
    display = found & week.display[at] if len(week.keys) else found
    mailer = found & week.mailer[at] if len(week.keys) else found
    return {"promo_display": display.astype(np.float32), "promo_mailer": mailer.astype(np.float32),
            "promo_stores": week.store_share[item], "price_cut": week.price_cut[item]}
