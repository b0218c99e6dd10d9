"""Incrementality: a T-learner uplift model on logged coupon exposures, and per-member uplift scores.

A coupon should go to the member whose purchase it causes. With randomised exposure (treated vs
control), one model learns P(convert | coupon, x) and another P(convert | no coupon, x); their difference
is the uplift. Features come only from observed behaviour before the exposure (recency, frequency,
spend, price paid relative to the category, coupon and campaign history, channel mix, tier), never from
simulator latents. Both models are regularised logistic regressions on standardised features (a
quadratic expansion overfitted the small control arm and halved the measured gain), so the whole model
is a few arrays saved as `.npz` (no pickles) and scoring is a matrix product.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omnirec.domain.clock import DAY, stale_data_warning
from omnirec.domain.idmap import IdMap
from omnirec.domain.readers import EXPOSURES_FILE, RetailData
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, Col, EventType
from omnirec.offers.policy import UpliftEstimate

RESPONSE_WINDOW_DAYS = 14
"""A campaign's conversions are known this long after exposure (`simulator.coupons.WINDOW_DAYS`)."""
PRIOR_RATE, PRIOR_WEIGHT = 0.3, 2.0
"""Smoothing of past conversion rates towards an average response."""
FEATURES = (
    "recency_days", "log_purchases_365d", "log_spend_365d", "log_avg_price", "rel_price", "log_views_365d",
    "events_per_active_month", "coupon_redemptions", "coupon_share", "tenure_years", "tier_rank",
    "past_treated", "past_treated_rate", "past_control", "past_control_rate", *(f"share_{c.value}" for c in Channel),
)


def behaviour_features(events: pa.Table, items: pa.Table, members: pa.Table, as_of: float,
                       exposures: pa.Table | None = None, tiers: TierLadder | None = None) -> np.ndarray:
    """(members, len(FEATURES)) features from events strictly before `as_of`, rows in `members` order.

    `rel_price` is the mean log ratio of the prices of the items a member looks at and buys to their
    category's median price: members who trade down to cheaper items are the price-sensitive ones, the
    classic persuadables. `events_per_active_month` measures how active they are while active.
    `past_*` summarise earlier campaigns whose response window had closed by `as_of`: how often the
    member was treated or held out, and how often they converted in each arm (smoothed rates).
    """
    ladder = tiers or TierLadder()
    member_map = IdMap.from_ids(members["member_id"].to_numpy(zero_copy_only=False))
    n = len(member_map)
    ev = events.filter(pc.and_(pc.less(events[Col.TS], int(as_of)), pc.is_valid(events[Col.MEMBER_ID])))
    m = member_map.to_internal(ev[Col.MEMBER_ID].to_numpy(zero_copy_only=False), strict=False)
    keep = m >= 0
    ev, m = ev.filter(pa.array(keep)), m[keep]
    ts = ev[Col.TS].to_numpy().astype(np.float64)
    kind = ev[Col.EVENT_TYPE].to_numpy(zero_copy_only=False)
    price = ev[Col.PRICE].to_numpy()
    qty = ev[Col.QUANTITY].to_numpy().astype(np.float64)
    year = ts >= as_of - 365 * DAY
    buy = (kind == EventType.PURCHASE.value) & year
    view = (kind == EventType.VIEW.value) & year
    coupon = (kind == EventType.COUPON_REDEEM.value) & year

    item_map = IdMap.from_ids(items["item_id"].to_numpy(zero_copy_only=False))
    category = items["category"].to_numpy(zero_copy_only=False)
    item_price = items["price"].to_numpy()
    cats, cat_idx = np.unique(category, return_inverse=True)
    median = np.array([np.median(item_price[cat_idx == c]) for c in range(len(cats))])
    ev_item = item_map.to_internal(ev[Col.ITEM_ID].fill_null("").to_numpy(zero_copy_only=False), strict=False)
    known = ev_item >= 0
    ratio = np.where(known, item_price[np.maximum(ev_item, 0)] / median[cat_idx[np.maximum(ev_item, 0)]], 1.0)

    def count(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(m[mask], weights=None if weights is None else weights[mask], minlength=n)

    purchases = count(buy)
    spend = count(buy, price * qty)
    last = np.full(n, -np.inf)
    all_buys = kind == EventType.PURCHASE.value
    np.maximum.at(last, m[all_buys], ts[all_buys])
    signup = members["signup_ts"].to_numpy().astype(np.float64)
    recency = np.where(np.isfinite(last), (as_of - last) / DAY, np.minimum((as_of - signup) / DAY, 400.0))
    first = np.full(n, np.inf)
    np.minimum.at(first, m[year], ts[year])
    last_seen = np.full(n, -np.inf)
    np.maximum.at(last_seen, m[year], ts[year])
    active_months = np.where(np.isfinite(first), np.clip((last_seen - first) / (30 * DAY), 1.0, 12.2), 1.0)
    touched = year & known
    chan = ev[Col.CHANNEL].to_numpy(zero_copy_only=False)
    total = np.maximum(count(year), 1)
    shares = [count(year & (chan == c.value)) / total for c in Channel]
    tier_rank = np.array([ladder.rank(t) for t in members["tier"].to_pylist()], dtype=np.float64)
    x = np.column_stack([
        np.minimum(recency, 400.0), np.log1p(purchases), np.log1p(spend),
        np.log1p(spend / np.maximum(count(buy, qty), 1)),
        np.where(count(touched) > 0, count(touched, np.log(ratio)) / np.maximum(count(touched), 1), 0.0),
        np.log1p(count(view)), count(year & ~coupon) / active_months, count(coupon),
        count(coupon) / np.maximum(purchases, 1), (as_of - signup) / (365 * DAY), tier_rank,
        *_past_campaigns(exposures, member_map, as_of), *shares,
    ])
    return x.astype(np.float64)


def _past_campaigns(exposures: pa.Table | None, member_map: IdMap, as_of: float) -> list[np.ndarray]:
    """Exposures per arm and smoothed conversion rates, from campaigns whose window closed before `as_of`."""
    n = len(member_map)
    if exposures is None:
        return [np.zeros(n), np.full(n, PRIOR_RATE), np.zeros(n), np.full(n, PRIOR_RATE)]
    closed = exposures["exposed_ts"].to_numpy() + RESPONSE_WINDOW_DAYS * DAY <= as_of
    m = member_map.to_internal(exposures["member_id"].to_numpy(zero_copy_only=False), strict=False)
    treated = exposures["treated"].to_numpy(zero_copy_only=False)
    converted = exposures["converted"].to_numpy(zero_copy_only=False).astype(np.float64)
    out = []
    for arm in (treated, ~treated):
        rows = closed & arm & (m >= 0)
        seen = np.bincount(m[rows], minlength=n).astype(np.float64)
        conv = np.bincount(m[rows], weights=converted[rows], minlength=n)
        out += [seen, (conv + PRIOR_RATE * PRIOR_WEIGHT) / (seen + PRIOR_WEIGHT)]
    return out


@dataclass(frozen=True)
class UpliftModel:
    """T-learner: `treated` and `control` logistic models over the same expanded features."""

    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    """(2, n_features): row 0 control, row 1 treated."""
    intercept: np.ndarray
    """(2,)"""

    @classmethod
    def fit(cls, x: np.ndarray, treated: np.ndarray, converted: np.ndarray, c: float = 0.1) -> UpliftModel:
        from sklearn.linear_model import LogisticRegression  # training only: serving never imports sklearn

        mean, std = x.mean(0), x.std(0) + 1e-9
        z = (x - mean) / std
        coefs, intercepts = [], []
        for arm in (False, True):
            rows = treated == arm
            lr = LogisticRegression(C=c, max_iter=500).fit(z[rows], converted[rows])
            coefs.append(lr.coef_[0])
            intercepts.append(lr.intercept_[0])
        return cls(mean, std, np.array(coefs), np.array(intercepts))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_control, p_treated) per row."""
        z = (x - self.mean) / self.std
        p = 1.0 / (1.0 + np.exp(-(z @ self.coef.T + self.intercept)))
        return p[:, 0], p[:, 1]

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, std=self.std, coef=self.coef, intercept=self.intercept,
                 features=np.array(FEATURES))

    @classmethod
    def load(cls, path: Path) -> UpliftModel:
        with np.load(path, allow_pickle=False) as f:
            if tuple(f["features"].tolist()) != FEATURES:
                raise ValueError(f"{path}: trained on other features {f['features'].tolist()}")
            return cls(f["mean"], f["std"], f["coef"], f["intercept"])


def exposure_training_set(exposures: pa.Table, events: pa.Table, items: pa.Table, members: pa.Table,
                          tiers: TierLadder | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, treated, converted) with each exposure's features computed as of its campaign's start."""
    member_map = IdMap.from_ids(members["member_id"].to_numpy(zero_copy_only=False))
    xs, ts, cs = [], [], []
    exposed_at = exposures["exposed_ts"].to_numpy()
    for at in np.unique(exposed_at):
        rows = exposures.filter(pa.array(exposed_at == at))
        x = behaviour_features(events, items, members, float(at), exposures, tiers)
        idx = member_map.to_internal(rows["member_id"].to_numpy(zero_copy_only=False))
        xs.append(x[idx])
        ts.append(rows["treated"].to_numpy(zero_copy_only=False))
        cs.append(rows["converted"].to_numpy(zero_copy_only=False))
    return np.vstack(xs), np.concatenate(ts), np.concatenate(cs)


@dataclass(frozen=True)
class UpliftScores:
    """Per-member conversion estimates without and with a coupon, scored in batch and looked up online."""

    members: IdMap
    p_control: np.ndarray
    p_treated: np.ndarray
    model_version: str

    def get(self, member_id: str) -> UpliftEstimate | None:
        i = self.members.get(member_id)
        return None if i is None else UpliftEstimate(float(self.p_control[i]), float(self.p_treated[i]))

    def save(self, path: Path) -> None:
        np.savez(path, member_ids=self.members.external_ids, p_control=self.p_control, p_treated=self.p_treated,
                 model_version=np.array(self.model_version))

    @classmethod
    def load(cls, path: Path) -> UpliftScores:
        with np.load(path, allow_pickle=False) as f:
            return cls(IdMap.from_ids(f["member_ids"]), f["p_control"], f["p_treated"], str(f["model_version"]))


def train_uplift(data_dir: Path, out_dir: Path, tiers: TierLadder | None = None,
                 as_of: float | None = None) -> UpliftScores:
    """Train on every logged exposure in `data_dir`, score all members at `as_of` (default: just after the
    newest event). Events and exposures after as_of are left out; a stale history is logged.

    Writes `uplift_model.npz` (the model) and `uplift_scores.npz` (what the service loads); the version
    is a digest of the model's parameters, logged with every decision that used it.
    """
    data = RetailData.read(data_dir)
    exposures = pq.read_table(Path(data_dir) / EXPOSURES_FILE)
    if as_of is not None:
        data = data.until(as_of)
        exposures = exposures.filter(pc.less_equal(exposures["exposed_ts"], int(as_of)))
        stale_data_warning(float(pc.max(data.events[Col.TS]).as_py() or 0), as_of, "train-uplift")
    x, treated, converted = exposure_training_set(exposures, data.events, data.items, data.members, tiers)
    model = UpliftModel.fit(x, treated, converted)
    as_of = float(pc.max(data.events[Col.TS]).as_py()) + 1 if as_of is None else as_of
    p0, p1 = model.predict(behaviour_features(data.events, data.items, data.members, as_of, exposures, tiers))
    digest = hashlib.sha256(model.coef.tobytes() + model.intercept.tobytes()).hexdigest()[:12]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "uplift_model.npz")
    scores = UpliftScores(IdMap.from_ids(data.members["member_id"].to_numpy(zero_copy_only=False)), p0, p1, digest)
    scores.save(out / "uplift_scores.npz")
    return scores
