"""Entity values a retailer's export often lacks, derived from its events and never invented.

`complete_members` and `complete_items` are the one place that fills the member and item tables: the
importer calls them, and `RetailData.read` calls `complete_members` when a data directory has no member
table, so the defaults are the same whichever way data comes in (README, "Your own data").
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omnirec.domain.lifecycle import STAGES, LifecycleRules, lifecycle_stages
from omnirec.domain.schema import ITEM_SCHEMA, MEMBER_SCHEMA
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, Col, EventType

PRICE_BANDS = ("budget", "mid", "upper", "premium")
"""Quartiles of price within a category, cheapest first."""
UNKNOWN = "unknown"
"""Category and brand of an item the retailer did not describe."""


def codes(values: pa.ChunkedArray | pa.Array, value_set: pa.Array) -> np.ndarray:
    """Position of each value in `value_set`, -1 for null or unknown (vectorised, Arrow hash join)."""
    return pc.fill_null(pc.index_in(values, value_set=value_set), -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _mode(owner: np.ndarray, value: np.ndarray, n_owners: int) -> np.ndarray:
    """Each owner's most frequent value (ties: the smallest code), -1 for owners without rows."""
    out = np.full(n_owners, -1, np.int64)
    if len(owner) == 0:
        return out
    n_values = int(value.max()) + 1
    pair = owner * n_values + value
    uniq, count = np.unique(pair, return_counts=True)
    # Sorting by (owner, -count) keeps each owner's most frequent value first.
    order = np.lexsort((-count, uniq // n_values))
    uniq = uniq[order]
    first = np.r_[True, (uniq // n_values)[1:] != (uniq // n_values)[:-1]]
    out[uniq[first] // n_values] = uniq[first] % n_values
    return out


def spend(events: pa.Table) -> pa.Table:
    """Member id -> money spent on purchases minus returns (quantity x unit price)."""
    kind = events[Col.EVENT_TYPE]
    sign = pc.if_else(pc.equal(kind, EventType.PURCHASE.value), 1.0,
                      pc.if_else(pc.equal(kind, EventType.RETURN.value), -1.0, 0.0))
    amount = pc.multiply(pc.multiply(pc.cast(events[Col.QUANTITY], pa.float64()), events[Col.PRICE]), sign)
    table = pa.table({"member_id": events[Col.MEMBER_ID], "amount": amount}).filter(
        pc.is_valid(events[Col.MEMBER_ID]))
    return table.group_by("member_id").aggregate([("amount", "sum")])


def complete_members(
    events: pa.Table,
    stores: pa.Table,
    tiers: TierLadder,
    rules: LifecycleRules,
    as_of: float,
    points_per_currency: float = 1.0,
    given: pa.Table | None = None,
) -> pa.Table:
    """One row per member in `given` or in the events, every `MEMBER_SCHEMA` column filled.

    Columns of `given` win; missing ones are derived: signup = first event (members without events:
    the newest event in the data, so they count as new joiners, not as old churners); points = spend x
    `points_per_currency` (floored at 0); tier from points on the ladder; lifecycle stage at `as_of`;
    home store = the most visited store, region = that store's region ("" where unknown); channel habit =
    the most used channel; marketing consent False on every channel unless given.
    """
    given_ids = given["member_id"].combine_chunks() if given is not None else pa.array([], pa.string())
    seen = pc.unique(events[Col.MEMBER_ID].drop_null()) if events.num_rows else given_ids
    extra = pc.filter(seen, pc.invert(pc.is_in(seen, value_set=given_ids)))
    ids = pa.concat_arrays([given_ids.cast(pa.string()), extra.take(pc.sort_indices(extra)).cast(pa.string())])
    n = len(ids)
    m = codes(events[Col.MEMBER_ID], ids)
    known = m >= 0
    ts = events[Col.TS].to_numpy().astype(np.float64)
    newest = float(ts.max()) if len(ts) else float(as_of)

    first = np.full(n, np.inf)
    np.fmin.at(first, m[known], ts[known])
    signup = np.where(np.isinf(first), newest, first).astype(np.int64)

    totals = spend(events)
    member_spend = np.zeros(n)
    idx = codes(totals["member_id"], ids)
    member_spend[idx[idx >= 0]] = totals["amount_sum"].to_numpy()[idx >= 0]
    points = np.maximum(np.floor(member_spend * points_per_currency), 0).astype(np.int64)

    store_ids = pc.unique(events[Col.STORE_ID].drop_null()) if events.num_rows else pa.array(
        [], pa.string())
    st = codes(events[Col.STORE_ID], store_ids)
    visited = known & (st >= 0)
    home_code = _mode(m[visited], st[visited], n)
    home = np.where(home_code >= 0, store_ids.to_numpy(zero_copy_only=False).astype(object)[home_code], "")
    at = codes(pa.array(home, pa.string()), stores["store_id"].combine_chunks())
    region = np.where(at >= 0, stores["region"].to_numpy().astype(object)[np.maximum(at, 0)] if len(stores)
                      else "", "")

    channels = [c.value for c in Channel]
    ch = codes(events[Col.CHANNEL], pa.array(channels))
    habit_code = _mode(m[known], ch[known], n)
    habit = np.where(habit_code >= 0, np.array(channels, dtype=object)[np.maximum(habit_code, 0)], "")

    buy = known & (codes(events[Col.EVENT_TYPE], pa.array([EventType.PURCHASE.value])) == 0)
    last, prev = last_two(m[buy], ts[buy], n)

    columns: dict[str, pa.Array] = {
        "member_id": ids, "signup_ts": pa.array(signup), "home_store": pa.array(home, pa.string()),
        "region": pa.array(region, pa.string()), "points": pa.array(points),
        "tier": pa.array(np.array(tiers.names, dtype=object)[tiers.tier_codes(points)], pa.string()),
        "channel_habit": pa.array(habit, pa.string()),
        **{f"consent_{c}": pa.array(np.zeros(n, bool)) for c in channels},
    }
    if given is not None:
        if "points" in given.column_names:
            columns["points"] = _prefer(given["points"], columns["points"])
            points = columns["points"].to_numpy().astype(np.int64)
            columns["tier"] = pa.array(np.array(tiers.names, dtype=object)[tiers.tier_codes(points)], pa.string())
        for name in set(given.column_names) & set(columns) - {"member_id", "points"}:
            columns[name] = _prefer(given[name], columns[name])
        signup = columns["signup_ts"].to_numpy().astype(np.int64)
    stage_names = np.array([s.value for s in STAGES], dtype=object)
    columns["lifecycle_stage"] = pa.array(stage_names[lifecycle_stages(
        rules, as_of, signup.astype(np.float64), last, prev)])
    return pa.table({f.name: columns[f.name].cast(f.type) for f in MEMBER_SCHEMA}, schema=MEMBER_SCHEMA)


def restage(members: pa.Table, events: pa.Table, rules: LifecycleRules, as_of: float) -> pa.Table:
    """`members` with `lifecycle_stage` recomputed at `as_of` from their signup and purchases."""
    ids = members["member_id"].combine_chunks()
    m = codes(events[Col.MEMBER_ID], ids)
    buy = (m >= 0) & (codes(events[Col.EVENT_TYPE], pa.array([EventType.PURCHASE.value])) == 0)
    last, prev = last_two(m[buy], events[Col.TS].to_numpy()[buy].astype(np.float64), len(ids))
    stage_names = np.array([s.value for s in STAGES], dtype=object)
    stages = stage_names[lifecycle_stages(rules, as_of, members["signup_ts"].to_numpy().astype(np.float64), last,
                                          prev)]
    at = members.schema.get_field_index("lifecycle_stage")
    return members.set_column(at, members.schema.field(at), pa.array(stages, pa.string()))


def _prefer(given: pa.ChunkedArray, derived: pa.Array) -> pa.Array:
    """The given value where there is one, else the derived one; rows past the given table are derived."""
    head = given.combine_chunks().cast(derived.type)
    return pa.concat_arrays([pc.if_else(pc.is_valid(head), head, derived.slice(0, len(head))),
                             derived.slice(len(head))])


def last_two(member: np.ndarray, ts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each member's last purchase time and the one before it (NaN when absent)."""
    order = np.lexsort((ts, member))
    member, ts = member[order], ts[order]
    last, prev = np.full(n, np.nan), np.full(n, np.nan)
    if len(member) == 0:
        return last, prev
    is_last = np.r_[member[1:] != member[:-1], True]
    last[member[is_last]] = ts[is_last]
    before = np.flatnonzero(is_last) - 1
    has_prev = (before >= 0) & (member[np.maximum(before, 0)] == member[is_last])
    prev[member[is_last][has_prev]] = ts[before[has_prev]]
    return last, prev


def price_bands(category: pa.Array, price: np.ndarray) -> pa.Array:
    """`PRICE_BANDS` by quartile of price within each category (the simulator's rule)."""
    category_code = pc.dictionary_encode(category).indices.to_numpy(zero_copy_only=False)
    band = np.zeros(len(price), np.int64)
    order = np.lexsort((price, category_code))
    sorted_codes = category_code[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    band[order] = np.minimum(4 * rank // np.repeat(sizes, sizes), 3)
    return pa.array(np.array(PRICE_BANDS, dtype=object)[band], pa.string())


def median_paid(events: pa.Table, item_ids: pa.Array) -> np.ndarray:
    """Median unit price paid in purchases per item of `item_ids` (NaN if never bought): the price of an
    item the catalogue does not price. One sort instead of a group-by (10x faster at 1.5M rows)."""
    out = np.full(len(item_ids), np.nan)
    buy = codes(events[Col.EVENT_TYPE], pa.array([EventType.PURCHASE.value])) == 0
    item = codes(events[Col.ITEM_ID], item_ids)
    keep = buy & (item >= 0)
    item, price = item[keep], events[Col.PRICE].to_numpy()[keep]
    if len(item) == 0:
        return out
    order = np.lexsort((price, item))
    item, price = item[order], price[order]
    starts = np.flatnonzero(np.r_[True, item[1:] != item[:-1]])
    sizes = np.diff(np.r_[starts, len(item)])
    lo, hi = starts + (sizes - 1) // 2, starts + sizes // 2
    out[item[starts]] = (price[lo] + price[hi]) / 2
    return out


def complete_items(items: pa.Table, events: pa.Table, add_unknown: bool) -> tuple[pa.Table, int]:
    """Every `ITEM_SCHEMA` column filled, plus (when `add_unknown`) the items events name but the file lacks.

    Missing category or brand is `UNKNOWN`; a missing price is the median unit price paid, else 0; the
    price band is the price's quartile within the category; attributes default to none. Returns the table
    and how many unknown items were added.
    """
    ids = items["item_id"].combine_chunks()
    added = 0
    if add_unknown and events.num_rows:
        named = pc.unique(events[Col.ITEM_ID].drop_null())
        new = pc.filter(named, pc.invert(pc.is_in(named, value_set=ids)))
        new = new.take(pc.sort_indices(new))
        added = len(new)
        items = pa.concat_tables([items, pa.table({"item_id": new}).cast(
            pa.schema([pa.field("item_id", pa.string())]))], promote_options="default")
        ids = items["item_id"].combine_chunks()
    n = len(ids)
    category = _filled(items, "category", n)
    brand = _filled(items, "brand", n)
    median = median_paid(events, ids)
    listed = (items["price"].to_numpy(zero_copy_only=False).astype(np.float64) if "price" in items.column_names
              else np.full(n, np.nan))
    price = np.where(np.isnan(listed), np.nan_to_num(median, nan=0.0), listed)
    attributes = (pc.fill_null(items["attributes"].combine_chunks(), pa.scalar([], pa.list_(pa.string())))
                  if "attributes" in items.column_names else pa.array([[]] * n, pa.list_(pa.string())))
    return pa.table({"item_id": ids, "category": category, "brand": brand, "price": pa.array(price),
                     "price_band": price_bands(category, price), "attributes": attributes},
                    schema=ITEM_SCHEMA), added


def _filled(table: pa.Table, name: str, n: int) -> pa.Array:
    if name not in table.column_names:
        return pa.array([UNKNOWN] * n, pa.string())
    col = table[name].combine_chunks().cast(pa.string())
    return pc.if_else(pc.or_kleene(pc.is_null(col), pc.equal(col, "")), UNKNOWN, col)
