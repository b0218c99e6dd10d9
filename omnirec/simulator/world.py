"""The static world: taxonomy, items, brands, stores and stock, and members' latent traits.

Latent traits (tastes, brand loyalty, price sensitivity, channel habits, activity, churn) are what
the models must recover from behaviour; they never leave the simulator except as ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from omnirec.domain.clock import DAY
from omnirec.domain.schema import INVENTORY_SCHEMA, ITEM_SCHEMA, STORE_SCHEMA
from omnirec.domain.vocab import ONLINE_STORE, Channel
from omnirec.simulator.config import SimulationConfig

# department -> subcategory -> (base price, seasonal amplitude, peak day of year)
TAXONOMY: dict[str, dict[str, tuple[float, float, int]]] = {
    "apparel": {"tops": (30, 0.1, 120), "bottoms": (45, 0.1, 120), "outerwear": (120, 0.8, 10),
                "shoes": (80, 0.1, 250)},
    "beauty": {"skincare": (35, 0.1, 330), "makeup": (25, 0.1, 330), "fragrance": (70, 0.5, 350)},
    "home": {"kitchen": (40, 0.1, 330), "bedding": (60, 0.2, 300), "decor": (30, 0.4, 350)},
    "electronics": {"phones": (600, 0.3, 340), "phone_accessories": (20, 0.3, 340), "audio": (120, 0.3, 340)},
    "grocery": {"snacks": (4, 0.1, 350), "beverages": (3, 0.4, 200), "fresh": (6, 0.0, 1)},
    "sports": {"fitness": (50, 0.4, 15), "outdoor": (90, 0.7, 190), "swimwear": (35, 0.9, 190)},
    "kids": {"toys": (25, 0.8, 350), "baby_care": (15, 0.0, 1)},
}
COMPLEMENTS = {
    "tops": "bottoms", "bottoms": "shoes", "outerwear": "tops", "shoes": "tops", "skincare": "makeup",
    "makeup": "skincare", "fragrance": "skincare", "kitchen": "fresh", "bedding": "decor", "decor": "bedding",
    "phones": "phone_accessories", "phone_accessories": "audio", "audio": "phone_accessories",
    "snacks": "beverages", "beverages": "snacks", "fresh": "beverages", "fitness": "beverages",
    "outdoor": "beverages", "swimwear": "outdoor", "toys": "baby_care", "baby_care": "toys",
}
SUBCATS: list[tuple[str, str]] = [(d, s) for d, subs in TAXONOMY.items() for s in subs]
REGIONS = ("north", "south", "east", "west", "central", "coast")
COLORS = ("black", "white", "red", "blue", "green", "beige")
STYLES = ("classic", "sport", "eco", "premium", "basic")
PRICE_BANDS = ("budget", "mid", "upper", "premium")

# habit -> probability per channel in Channel order (app, mini_program, web, pos, store)
CHANNEL_HABITS = {
    "app_heavy": (0.62, 0.08, 0.08, 0.17, 0.05),
    "mini_program_heavy": (0.10, 0.60, 0.05, 0.20, 0.05),
    "web_heavy": (0.10, 0.05, 0.65, 0.15, 0.05),
    "store_heavy": (0.06, 0.04, 0.05, 0.55, 0.30),
    "mixed": (0.25, 0.15, 0.15, 0.30, 0.15),
}
HABIT_SHARE = (0.3, 0.12, 0.13, 0.25, 0.2)


@dataclass(frozen=True)
class Catalogue:
    item_ids: pa.Array
    subcat: np.ndarray
    """Index into SUBCATS per item."""
    brand: np.ndarray
    price: np.ndarray
    popularity: np.ndarray
    brand_dept: np.ndarray
    """Department index of each brand."""
    table: pa.Table


@dataclass(frozen=True)
class Population:
    member_ids: pa.Array
    taste: np.ndarray
    """(members, subcats) probabilities."""
    fav_brand: np.ndarray
    brand_loyalty: np.ndarray
    price_sensitivity: np.ndarray
    channel_cdf: np.ndarray
    """(members, channels) cumulative channel probabilities, channels in config order."""
    habit: np.ndarray
    activity: np.ndarray
    signup_ts: np.ndarray
    active_from: np.ndarray
    active_until: np.ndarray
    comeback_ts: np.ndarray
    """Reactivation time for some churners (NaN: never comes back)."""
    home_store: np.ndarray
    consent: np.ndarray
    """(members, 5) marketing consent per channel, in Channel order."""


def _ids(prefix: str, n: int, width: int) -> pa.Array:
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(n)], pa.string())


def make_catalogue(cfg: SimulationConfig, rng: np.random.Generator) -> Catalogue:
    n = cfg.n_items
    dept_names = list(TAXONOMY)
    sub_weight = rng.dirichlet(np.full(len(SUBCATS), 3.0))
    subcat = rng.choice(len(SUBCATS), size=n, p=sub_weight)
    if n >= len(SUBCATS):
        subcat[: len(SUBCATS)] = np.arange(len(SUBCATS))
    subcat = np.sort(subcat)
    item_dept = np.array([dept_names.index(SUBCATS[s][0]) for s in subcat])
    n_brands = max(len(TAXONOMY), n // 40)
    brand_dept = np.arange(n_brands) % len(TAXONOMY)
    brand_premium = rng.lognormal(0, 0.35, n_brands)
    brand = np.empty(n, np.int64)
    for d in range(len(TAXONOMY)):
        mask = item_dept == d
        brand[mask] = rng.choice(np.flatnonzero(brand_dept == d), size=mask.sum())
    base = np.array([TAXONOMY[SUBCATS[s][0]][SUBCATS[s][1]][0] for s in subcat], float)
    price = np.round(base * brand_premium[brand] * rng.lognormal(0, 0.3, n), 2) + 0.99
    band = np.zeros(n, np.int64)
    for s in np.unique(subcat):
        mask = subcat == s
        band[mask] = np.searchsorted(np.quantile(price[mask], [0.25, 0.5, 0.75]), price[mask])
    popularity = rng.lognormal(0, 1.2, n)
    item_ids = _ids("i", n, 6)
    color = rng.integers(0, len(COLORS), n)
    style = rng.integers(0, len(STYLES), n)
    table = pa.table({
        "item_id": item_ids,
        "category": pa.array([f"{SUBCATS[s][0]}/{SUBCATS[s][1]}" for s in subcat]),
        "brand": pa.array([f"brand_{b:04d}" for b in brand]),
        "price": pa.array(price),
        "price_band": pa.array([PRICE_BANDS[b] for b in band]),
        "attributes": pa.array([[f"color:{COLORS[c]}", f"style:{STYLES[s]}"] for c, s in zip(color, style,
                                                                                              strict=True)]),
    }, schema=ITEM_SCHEMA)
    return Catalogue(item_ids, subcat, brand, price, popularity, brand_dept, table)


def make_stores(cfg: SimulationConfig, rng: np.random.Generator) -> pa.Table:
    n = cfg.stores
    return pa.table({"store_id": _ids("s", n, 4), "region": pa.array(rng.choice(REGIONS, n))}, schema=STORE_SCHEMA)


def make_inventory(cfg: SimulationConfig, cat: Catalogue, stores: pa.Table, rng: np.random.Generator) -> pa.Table:
    """Online stock for every item (5% sold out); each store stocks a popularity-weighted assortment."""
    n = cfg.n_items
    online_qty = rng.poisson(30, n) * (rng.random(n) > 0.05)
    store_ids = [ONLINE_STORE]
    item_idx = [np.arange(n)]
    qty = [online_qty]
    k = min(cfg.store_assortment, n)
    p = cat.popularity / cat.popularity.sum()
    for sid in stores["store_id"].to_pylist():
        carried = rng.choice(n, size=k, replace=False, p=p)
        store_ids.append(sid)
        item_idx.append(np.sort(carried))
        qty.append(rng.poisson(6, k) * (rng.random(k) > 0.1))
    sizes = [len(i) for i in item_idx]
    return pa.table({
        "store_id": pa.array(np.repeat(np.array(store_ids), sizes)),
        "item_id": cat.item_ids.take(pa.array(np.concatenate(item_idx))),
        "quantity": pa.array(np.concatenate(qty).astype(np.int32)),
    }, schema=INVENTORY_SCHEMA)


def make_population(cfg: SimulationConfig, cat: Catalogue, rng: np.random.Generator) -> Population:
    n = cfg.n_members
    n_dept = len(TAXONOMY)
    dept_of_sub = np.array([list(TAXONOMY).index(d) for d, _ in SUBCATS])
    dept_taste = rng.dirichlet(np.full(n_dept, 0.35), n)
    sub_taste = dept_taste[:, dept_of_sub] * rng.dirichlet(np.full(len(SUBCATS), 2.0), n)
    sub_taste /= sub_taste.sum(1, keepdims=True)
    top_dept = dept_taste.argmax(1)
    brands_by_dept = [np.flatnonzero(cat.brand_dept == d) for d in range(n_dept)]
    fav_brand = np.array([rng.choice(brands_by_dept[d]) for d in top_dept])

    habit = rng.choice(len(CHANNEL_HABITS), size=n, p=HABIT_SHARE)
    habit_probs = np.array(list(CHANNEL_HABITS.values()))
    allowed = [list(Channel).index(c) for c in cfg.channels]
    probs = habit_probs[habit][:, allowed] + 1e-9
    probs /= probs.sum(1, keepdims=True)

    signup = rng.uniform(cfg.end_ts - 3 * cfg.days * DAY, cfg.end_ts - DAY, n)
    active_from = np.maximum(signup, cfg.start_ts)
    quits = rng.random(n) < 0.4
    active_until = np.where(quits, rng.uniform(active_from, cfg.end_ts), cfg.end_ts)
    comeback = np.where(quits & (rng.random(n) < 0.15),
                        active_until + rng.uniform(130, 250, n) * DAY, np.nan)
    comeback = np.where(comeback < cfg.end_ts - DAY, comeback, np.nan)

    return Population(
        member_ids=_ids("m", n, 7),
        taste=sub_taste.astype(np.float32),
        fav_brand=fav_brand,
        brand_loyalty=rng.beta(2, 4, n),
        price_sensitivity=rng.beta(2, 2, n),
        channel_cdf=np.cumsum(probs, 1),
        habit=habit,
        activity=rng.gamma(1.5, 1 / 1.5, n),
        signup_ts=signup,
        active_from=active_from,
        active_until=active_until,
        comeback_ts=comeback,
        home_store=rng.integers(0, cfg.stores, n),
        consent=rng.random((n, len(Channel))) < np.array([0.8, 0.7, 0.6, 0.5, 0.4]),
    )


def season_factor(day_of_year: np.ndarray) -> np.ndarray:
    """(len(days), subcats) demand multipliers: each subcategory peaks on its own day of the year."""
    amp = np.array([TAXONOMY[d][s][1] for d, s in SUBCATS])
    peak = np.array([TAXONOMY[d][s][2] for d, s in SUBCATS])
    return 1 + amp * np.cos(2 * np.pi * (day_of_year[:, None] - peak) / 365.0)
