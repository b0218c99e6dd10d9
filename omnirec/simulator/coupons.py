"""Coupon campaigns with randomised exposure and a known, heterogeneous response per member.

Every member has a response type drawn from their latent traits (price-sensitive members tend to be
persuadable, very active ones buy anyway, a few loyal big spenders react badly). The types and the
true conversion probabilities with and without a coupon go to a separate ground-truth file so that
targeting policies can be scored on incremental conversions.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from omnirec.domain.vocab import EventType
from omnirec.simulator.behaviour import CHANNEL_CODES, DAY, EventBatch, ItemPicker
from omnirec.simulator.config import SimulationConfig
from omnirec.simulator.world import Catalogue, Population

RESPONSE_TYPES = ("sure_thing", "persuadable", "lost_cause", "sleeping_dog")
# (conversion without coupon, conversion with coupon) per type
RESPONSE_RATES = np.array([[0.55, 0.60], [0.04, 0.45], [0.01, 0.02], [0.35, 0.08]])
CAMPAIGNS = (("cmp-autumn-10off", 90), ("cmp-winback-15off", 45), ("cmp-weekend-5pct", 14))
"""(campaign id, days before the end of history it ran)."""
COUPON_VALUE = 10.0
TREATED_SHARE = 0.8
EXPOSED_SHARE = 0.3
WINDOW_DAYS = 14

GROUND_TRUTH_SCHEMA = pa.schema([
    ("member_id", pa.string()), ("response_type", pa.string()),
    ("p_convert_control", pa.float64()), ("p_convert_treated", pa.float64()), ("uplift", pa.float64()),
])
EXPOSURE_SCHEMA = pa.schema([
    ("campaign_id", pa.string()), ("member_id", pa.string()), ("channel", pa.string()),
    ("exposed_ts", pa.int64()), ("treated", pa.bool_()), ("converted", pa.bool_()),
    ("redeemed", pa.bool_()), ("order_value", pa.float64()),
])


def response_probabilities(pop: Population, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Response type per member and (members, 2) conversion probabilities (control, treated)."""
    ps, act = pop.price_sensitivity, np.minimum(pop.activity, 4.0)
    logits = np.stack([
        1.4 * act - 1.5 * ps,
        3.5 * ps - 0.4 * act - 0.6,
        0.8 - 1.4 * act,
        1.2 * act - 2.5 * ps - 1.2,
    ], axis=1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    kind = (rng.random(len(ps))[:, None] > np.cumsum(p, 1)).sum(1).clip(max=len(RESPONSE_TYPES) - 1)
    noise = rng.uniform(0.8, 1.2, (len(ps), 2))
    return kind, np.clip(RESPONSE_RATES[kind] * noise, 0, 1)


def run_campaigns(cfg: SimulationConfig, cat: Catalogue, pop: Population, picker: ItemPicker,
                  rng: np.random.Generator) -> tuple[pa.Table, pa.Table, EventBatch]:
    """Ground truth, exposures, and the purchase and redemption events the campaigns caused."""
    kind, rates = response_probabilities(pop, rng)
    ground_truth = pa.table({
        "member_id": pop.member_ids,
        "response_type": pa.array(RESPONSE_TYPES).take(pa.array(kind)),
        "p_convert_control": rates[:, 0], "p_convert_treated": rates[:, 1], "uplift": rates[:, 1] - rates[:, 0],
    }, schema=GROUND_TRUTH_SCHEMA)

    online = [i for i, c in enumerate(CHANNEL_CODES) if not c.is_physical and c in cfg.channels]
    exposures: list[pa.Table] = []
    batch = EventBatch()
    for campaign, days_before in CAMPAIGNS:
        at = cfg.end_ts - days_before * DAY
        active = (pop.active_from <= at) & (pop.active_until >= at)
        members = np.flatnonzero(active & (rng.random(len(active)) < EXPOSED_SHARE))
        treated = rng.random(len(members)) < TREATED_SHARE
        converted = rng.random(len(members)) < rates[members, treated.astype(int)]
        chan_idx = online if online else [CHANNEL_CODES.index(cfg.channels[0])]
        channel = np.array(chan_idx)[rng.integers(0, len(chan_idx), len(members))]
        sub = pop.taste[members].argmax(1)
        item = picker.in_subcat(sub, rng)
        buy_ts = at + rng.integers(DAY // 2, WINDOW_DAYS * DAY, len(members))
        value = cat.price[item]
        exposures.append(pa.table({
            "campaign_id": pa.array(np.full(len(members), campaign)),
            "member_id": pop.member_ids.take(pa.array(members)),
            "channel": pa.array([CHANNEL_CODES[c].value for c in channel], pa.string()),
            "exposed_ts": pa.array(np.full(len(members), at, np.int64)),
            "treated": treated, "converted": converted, "redeemed": treated & converted,
            "order_value": np.where(converted, value, 0.0),
        }, schema=EXPOSURE_SCHEMA))
        c = converted
        none = np.full(c.sum(), -1)
        batch.add(members[c], item[c], channel[c], EventType.PURCHASE, none, 1, value[c], buy_ts[c])
        r = treated & converted
        batch.add(members[r], item[r], channel[r], EventType.COUPON_REDEEM, np.full(r.sum(), -1), 1,
                  COUPON_VALUE, buy_ts[r])
    return ground_truth, pa.concat_tables(exposures), batch
