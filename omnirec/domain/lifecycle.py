"""Lifecycle stage rules, shared by the batch materialisation and live event updates.

The stage depends only on signup date, the last purchase and the purchase before it, so the batch
job (which sees the whole history) and a live purchase (which knows the previous last purchase)
compute the same answer with the same vectorised function.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from omnirec.domain.clock import DAY
from omnirec.domain.vocab import LifecycleStage

STAGES: tuple[LifecycleStage, ...] = tuple(LifecycleStage)
"""Stage codes returned by `lifecycle_stages` index into this tuple."""


class LifecycleRules(BaseModel):
    """Day thresholds; a member's recency (days since last purchase) places them on the ladder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    new_days: float = Field(30, gt=0, description="members younger than this are `new`")
    active_days: float = Field(60, gt=0, description="bought within this many days: `active`")
    at_risk_days: float = Field(120, gt=0, description="up to this recency: `at_risk`")
    dormant_days: float = Field(365, gt=0, description="up to this recency: `dormant`; beyond: `churned`")

    @model_validator(mode="after")
    def _check_order(self) -> LifecycleRules:
        if not self.active_days < self.at_risk_days < self.dormant_days:
            raise ValueError("need active_days < at_risk_days < dormant_days")
        return self


def lifecycle_stages(
    rules: LifecycleRules,
    now: float,
    signup_ts: np.ndarray,
    last_purchase_ts: np.ndarray,
    previous_purchase_ts: np.ndarray,
) -> np.ndarray:
    """Stage codes (indexes into `STAGES`) for many members; NaN timestamps mean "never purchased".

    A member is `reactivated` when their latest purchase is recent and came after a gap long enough
    to have made them dormant: a dormant member who buys comes back as `reactivated`.
    """
    signup = np.asarray(signup_ts, dtype=np.float64)
    last = np.asarray(last_purchase_ts, dtype=np.float64)
    prev = np.asarray(previous_purchase_ts, dtype=np.float64)
    age = (now - signup) / DAY
    bought = ~np.isnan(last)
    recency = np.where(bought, (now - last) / DAY, age)
    with np.errstate(invalid="ignore"):
        came_back = bought & ~np.isnan(prev) & ((last - prev) / DAY > rules.at_risk_days)
    code = {s: STAGES.index(s) for s in STAGES}
    return np.select(
        [
            age <= rules.new_days,
            bought & (recency <= rules.active_days) & came_back,
            bought & (recency <= rules.active_days),
            recency <= rules.at_risk_days,
            recency <= rules.dormant_days,
        ],
        [
            code[LifecycleStage.NEW],
            code[LifecycleStage.REACTIVATED],
            code[LifecycleStage.ACTIVE],
            code[LifecycleStage.AT_RISK],
            code[LifecycleStage.DORMANT],
        ],
        default=code[LifecycleStage.CHURNED],
    ).astype(np.int8)


def lifecycle_stage(
    rules: LifecycleRules,
    now: float,
    signup_ts: float,
    last_purchase_ts: float | None,
    previous_purchase_ts: float | None = None,
) -> LifecycleStage:
    """Stage of one member at `now` (unix seconds): `lifecycle_stages`' rule on scalars, because a request
    or a live event decides one member and the array form costs tens of microseconds of numpy set-up
    (`tests/domain/test_rules.py` checks that both give the same stage, thresholds included)."""
    age = (now - signup_ts) / DAY
    if age <= rules.new_days:
        return LifecycleStage.NEW
    recency = age if last_purchase_ts is None else (now - last_purchase_ts) / DAY
    if last_purchase_ts is not None and recency <= rules.active_days:
        came_back = (previous_purchase_ts is not None
                     and (last_purchase_ts - previous_purchase_ts) / DAY > rules.at_risk_days)
        return LifecycleStage.REACTIVATED if came_back else LifecycleStage.ACTIVE
    if recency <= rules.at_risk_days:
        return LifecycleStage.AT_RISK
    return LifecycleStage.DORMANT if recency <= rules.dormant_days else LifecycleStage.CHURNED
