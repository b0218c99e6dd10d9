"""Behaviour: sessions across channels turned into events, one batch of members at a time.

Structure planted for the models to find: taste over categories with seasonal peaks, brand loyalty,
price sensitivity, channel habits, basket complements, returns, members going quiet and coming back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from omnirec.domain.clock import DAY
from omnirec.domain.schema import EVENT_SCHEMA
from omnirec.domain.vocab import Channel, Col, EventType
from omnirec.simulator.config import SimulationConfig
from omnirec.simulator.world import COMPLEMENTS, SUBCATS, Catalogue, Population, season_factor

EVENT_CODES = list(EventType)
CHANNEL_CODES = list(Channel)
ONLINE = np.array([not c.is_physical for c in CHANNEL_CODES])


@dataclass
class EventBatch:
    """Columnar events with integer codes; -1 marks "none" for member, item and store."""

    member: list[np.ndarray] = field(default_factory=list)
    item: list[np.ndarray] = field(default_factory=list)
    channel: list[np.ndarray] = field(default_factory=list)
    event: list[np.ndarray] = field(default_factory=list)
    store: list[np.ndarray] = field(default_factory=list)
    qty: list[np.ndarray] = field(default_factory=list)
    price: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    anonymous: list[np.ndarray] = field(default_factory=list)

    def add(self, member: np.ndarray, item: np.ndarray, channel: np.ndarray, event: EventType | np.ndarray,
            store: np.ndarray, qty: np.ndarray | int, price: np.ndarray | float, ts: np.ndarray,
            anonymous: np.ndarray | None = None) -> None:
        n = len(member)
        self.member.append(np.asarray(member, np.int64))
        self.item.append(np.asarray(item, np.int64))
        self.channel.append(np.asarray(channel, np.int8))
        code = EVENT_CODES.index(event) if isinstance(event, EventType) else event
        self.event.append(np.broadcast_to(np.asarray(code, np.int8), n))
        self.store.append(np.asarray(store, np.int64))
        self.qty.append(np.broadcast_to(np.asarray(qty, np.int32), n))
        self.price.append(np.broadcast_to(np.asarray(price, np.float64), n))
        self.ts.append(np.asarray(ts, np.int64))
        self.anonymous.append(np.zeros(n, bool) if anonymous is None else anonymous)

    def arrays(self) -> dict[str, np.ndarray]:
        """Concatenated columns, ordered by time."""
        cols = {k: np.concatenate(getattr(self, k)) for k in
                ("member", "item", "channel", "event", "store", "qty", "price", "ts", "anonymous")}
        order = np.argsort(cols["ts"], kind="stable")
        return {k: v[order] for k, v in cols.items()}

    def to_table(self, cols: dict[str, np.ndarray], pop: Population, cat: Catalogue, store_ids: pa.Array,
                 anon_prefix: str) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """The events as an Arrow table, plus the anonymous ids used and their true member indexes."""
        anon = cols["anonymous"]
        member = np.where(anon, -1, cols["member"])
        anon_ids = np.full(len(anon), None, dtype=object)
        anon_ids[anon] = [f"{anon_prefix}{i}" for i in range(int(anon.sum()))]
        table = pa.table({
            Col.MEMBER_ID: _take(pop.member_ids, member),
            Col.ANONYMOUS_ID: pa.array(anon_ids, pa.string()),
            Col.ITEM_ID: _take(cat.item_ids, cols["item"]),
            Col.CHANNEL: pa.array([c.value for c in CHANNEL_CODES]).take(pa.array(cols["channel"])),
            Col.EVENT_TYPE: pa.array([e.value for e in EVENT_CODES]).take(pa.array(cols["event"])),
            Col.STORE_ID: _take(store_ids, cols["store"]),
            Col.QUANTITY: pa.array(cols["qty"]),
            Col.PRICE: pa.array(np.round(cols["price"], 2)),
            Col.TS: pa.array(cols["ts"]),
        }, schema=EVENT_SCHEMA)
        return table, anon_ids[anon].astype(str), cols["member"][anon]


def _take(values: pa.Array, idx: np.ndarray) -> pa.Array:
    return values.take(pa.array(idx, mask=idx < 0))


def _segment_pick(cum: np.ndarray, start: np.ndarray, stop: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Draw positions in [start, stop) of `cum`'s underlying weights, by inverse CDF."""
    lo = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
    hi = cum[stop - 1]
    pos = np.searchsorted(cum, lo + u * (hi - lo), side="right")
    return np.clip(pos, start, stop - 1)


class ItemPicker:
    """Popularity-weighted draws within a subcategory or a brand."""

    def __init__(self, cat: Catalogue) -> None:
        n_sub = len(SUBCATS)
        self.sub_cum = np.cumsum(cat.popularity)
        self.sub_start = np.searchsorted(cat.subcat, np.arange(n_sub), side="left")
        self.sub_stop = np.searchsorted(cat.subcat, np.arange(n_sub), side="right")
        self.brand_order = np.argsort(cat.brand, kind="stable")
        brands_sorted = cat.brand[self.brand_order]
        self.brand_cum = np.cumsum(cat.popularity[self.brand_order])
        n_brand = len(cat.brand_dept)
        self.brand_start = np.searchsorted(brands_sorted, np.arange(n_brand), side="left")
        self.brand_stop = np.searchsorted(brands_sorted, np.arange(n_brand), side="right")
        self.has_items = self.sub_stop > self.sub_start
        self.complement = np.array([[s for _, s in SUBCATS].index(COMPLEMENTS[s]) for _, s in SUBCATS])

    def in_subcat(self, sub: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _segment_pick(self.sub_cum, self.sub_start[sub], self.sub_stop[sub], rng.random(len(sub)))

    def in_brand(self, brand: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pos = _segment_pick(self.brand_cum, self.brand_start[brand], self.brand_stop[brand], rng.random(len(brand)))
        return self.brand_order[pos]


def active_spans(pop: Population, members: np.ndarray, end_ts: int) -> tuple[np.ndarray, np.ndarray]:
    """Seconds active before quitting, and after coming back (0 for members who never return)."""
    first = np.maximum(pop.active_until[members] - pop.active_from[members], 0)
    comeback = pop.comeback_ts[members]
    second = np.where(np.isnan(comeback), 0.0, end_ts - np.nan_to_num(comeback))
    return first, np.maximum(second, 0)


def session_times(pop: Population, members: np.ndarray, n_sess: np.ndarray, end_ts: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Uniform over each member's active spans."""
    first, second = active_spans(pop, members, end_ts)
    rep = np.repeat(np.arange(len(members)), n_sess)
    u = rng.random(len(rep)) * (first + second)[rep]
    in_first = u < first[rep]
    comeback = np.nan_to_num(pop.comeback_ts[members])[rep]
    return np.where(in_first, pop.active_from[members][rep] + u, comeback + u - first[rep])


def simulate_batch(cfg: SimulationConfig, cat: Catalogue, pop: Population, picker: ItemPicker,
                   members: np.ndarray, rng: np.random.Generator) -> EventBatch:
    """All events of one batch of members."""
    first, second = active_spans(pop, members, cfg.end_ts)
    n_sess = rng.poisson(cfg.sessions_per_member * pop.activity[members] * (first + second) / (365.0 * DAY))
    sess_member = np.repeat(members, n_sess)
    ts = session_times(pop, members, n_sess, cfg.end_ts, rng).astype(np.int64)
    n = len(sess_member)

    allowed = np.array([CHANNEL_CODES.index(c) for c in cfg.channels])
    chan = allowed[(rng.random(n)[:, None] > pop.channel_cdf[sess_member]).sum(1).clip(max=len(allowed) - 1)]

    doy = ((ts // DAY) % 365).astype(np.int64)
    weights = pop.taste[sess_member] * season_factor(doy) * picker.has_items
    cum = np.cumsum(weights, 1)
    sub = (rng.random(n)[:, None] * cum[:, -1:] > cum).sum(1).clip(max=len(SUBCATS) - 1)
    item = picker.in_subcat(sub, rng)
    loyal = rng.random(n) < pop.brand_loyalty[sess_member]
    item[loyal] = picker.in_brand(pop.fav_brand[sess_member[loyal]], rng)
    cheaper = picker.in_subcat(sub, rng)
    swap = (rng.random(n) < pop.price_sensitivity[sess_member]) & (cat.price[cheaper] < cat.price[item])
    item[swap] = cheaper[swap]

    home = pop.home_store[sess_member]
    store = np.where(rng.random(n) < 0.85, home, rng.integers(0, cfg.stores, n))
    batch = EventBatch()
    online = ONLINE[chan]
    is_store = chan == CHANNEL_CODES.index(Channel.STORE)
    is_pos = chan == CHANNEL_CODES.index(Channel.POS)
    none = np.full(n, -1)

    # Online: browse (views), maybe wishlist, cart and buy.
    o = np.flatnonzero(online)
    cart = rng.random(len(o)) < 0.35
    wish = rng.random(len(o)) < 0.06
    anonymous = (~cart & ~wish) & (rng.random(len(o)) < cfg.anonymous_share)
    batch.add(sess_member[o], item[o], chan[o], EventType.VIEW, none[o], 1, 0.0, ts[o], anonymous)
    extra = rng.poisson(0.8, len(o))
    eo = np.repeat(o, extra)
    batch.add(sess_member[eo], picker.in_subcat(sub[eo], rng), chan[eo], EventType.VIEW, none[eo], 1, 0.0,
              ts[eo] + rng.integers(5, 600, len(eo)), np.repeat(anonymous, extra))
    w = o[wish]
    batch.add(sess_member[w], item[w], chan[w], EventType.WISHLIST, none[w], 1, 0.0, ts[w] + 30)
    c = o[cart]
    batch.add(sess_member[c], item[c], chan[c], EventType.ADD_TO_CART, none[c], 1, 0.0, ts[c] + 60)
    online_buy = c[rng.random(len(c)) < 0.55]

    # Store visits, half of which end at the till; POS sessions are purchases.
    s = np.flatnonzero(is_store)
    batch.add(sess_member[s], none[s], chan[s], EventType.STORE_VISIT, store[s], 1, 0.0, ts[s])
    till = s[rng.random(len(s)) < 0.5]
    pos_buy = np.concatenate([np.flatnonzero(is_pos), till])

    buy = np.concatenate([online_buy, pos_buy])
    buy_chan = np.concatenate([chan[online_buy], np.full(len(pos_buy), CHANNEL_CODES.index(Channel.POS))])
    buy_store = np.concatenate([none[online_buy], store[pos_buy]])
    qty = 1 + rng.poisson(0.3, len(buy))
    batch.add(sess_member[buy], item[buy], buy_chan, EventType.PURCHASE, buy_store, qty, cat.price[item[buy]],
              ts[buy] + 120)

    # Basket complements: a purchase pulls in an item of the complementary subcategory.
    comp = rng.random(len(buy)) < 0.35
    cb = buy[comp]
    comp_item = picker.in_subcat(picker.complement[sub[cb]], rng)
    batch.add(sess_member[cb], comp_item, buy_chan[comp], EventType.PURCHASE, buy_store[comp], 1,
              cat.price[comp_item], ts[cb] + 150)

    # Returns a few days later, at the same channel.
    ret = rng.random(len(buy)) < 0.06
    rts = ts[buy[ret]] + rng.integers(2, 20, ret.sum()) * DAY
    keep = rts < cfg.end_ts
    rb = buy[ret][keep]
    batch.add(sess_member[rb], item[rb], buy_chan[ret][keep], EventType.RETURN, buy_store[ret][keep], 1,
              cat.price[item[rb]], rts[keep])
    return batch
