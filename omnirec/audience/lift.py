"""Lift of a campaign: confirmed sends against their holdout carve-out, read from behaviour afterwards.

Two read-outs per send and per offer (sends pooled): the response rate (share of members with a purchase
of the target, or any purchase for a whole-basket offer, within the window) and the incremental purchases
per member. The carve-out is random (a hash), so the difference between the arms estimates the causal
effect. The response rate understates it when many members buy within the window anyway (a caused
purchase on top of an ordinary one does not change the rate); purchases per member do not saturate, so
they are the unbiased read-out of "one more conversion".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omnirec.domain.lifecycle import DAY
from omnirec.domain.vocab import Col, EventType

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Send:
    """A confirmed send as the decision log holds it."""

    send_id: str
    offer_id: str
    sent_at: float
    treated: Sequence[str]
    holdout: Sequence[str]


@dataclass(frozen=True)
class LiftEstimate:
    scope: str
    """A send id, or `offer:<id>` for all sends of an offer pooled."""
    offer_id: str
    n_treated: int
    n_holdout: int
    rate_treated: float
    rate_holdout: float
    rate_lift: float
    rate_ci95: tuple[float, float]
    purchases_treated: float
    """Mean purchases (lines) per member in the window."""
    purchases_holdout: float
    incremental_purchases: float
    incremental_ci95: tuple[float, float]


def _outcomes(events: pa.Table, send: Send, window_days: float,
              target_items: frozenset[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Purchases per member (treated then holdout order) within the window after the send."""
    members = np.asarray([*send.treated, *send.holdout], dtype=object)
    mask = pc.and_(pc.equal(events[Col.EVENT_TYPE], EventType.PURCHASE.value),
                   pc.and_(pc.greater_equal(events[Col.TS], int(send.sent_at)),
                           pc.less(events[Col.TS], int(send.sent_at + window_days * DAY))))
    mask = pc.and_(mask, pc.is_in(events[Col.MEMBER_ID], pa.array(members, pa.string())))
    if target_items is not None:
        mask = pc.and_(mask, pc.is_in(events[Col.ITEM_ID], pa.array(sorted(target_items), pa.string())))
    bought = events.filter(mask)[Col.MEMBER_ID].to_numpy(zero_copy_only=False)
    ids, counts = np.unique(bought.astype(str), return_counts=True) if len(bought) else ([], [])
    per = dict(zip(ids, counts, strict=True))
    out = np.array([per.get(m, 0) for m in members], np.float64)
    return out[:len(send.treated)], out[len(send.treated):]


def _estimate(scope: str, offer_id: str, treated: np.ndarray, holdout: np.ndarray) -> LiftEstimate:
    def ci(diff: float, se: float) -> tuple[float, float]:
        return (diff - Z95 * se, diff + Z95 * se)

    n1, n0 = len(treated), len(holdout)
    if n1 == 0 or n0 == 0:
        nan = float("nan")
        return LiftEstimate(scope, offer_id, n1, n0, nan, nan, nan, (nan, nan), nan, nan, nan, (nan, nan))
    r1, r0 = float((treated > 0).mean()), float((holdout > 0).mean())
    se_rate = np.sqrt(r1 * (1 - r1) / n1 + r0 * (1 - r0) / n0)
    m1, m0 = float(treated.mean()), float(holdout.mean())
    se_mean = np.sqrt(treated.var(ddof=1) / n1 + holdout.var(ddof=1) / n0) if min(n1, n0) > 1 else float("nan")
    return LiftEstimate(scope, offer_id, n1, n0, r1, r0, r1 - r0, ci(r1 - r0, float(se_rate)), m1, m0, m1 - m0,
                        ci(m1 - m0, float(se_mean)))


def estimate_lift(sends: Iterable[Send], events: pa.Table, window_days: float = 14.0,
                  target_items: frozenset[str] | None = None) -> list[LiftEstimate]:
    """One estimate per send, then one per offer over its sends pooled (offers in first-send order)."""
    per_send, pooled = [], {}
    for send in sends:
        t, h = _outcomes(events, send, window_days, target_items)
        per_send.append(_estimate(send.send_id, send.offer_id, t, h))
        arms = pooled.setdefault(send.offer_id, ([], []))
        arms[0].append(t)
        arms[1].append(h)
    return per_send + [_estimate(f"offer:{offer}", offer, np.concatenate(t), np.concatenate(h))
                       for offer, (t, h) in pooled.items()]
