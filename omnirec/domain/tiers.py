"""Membership tiers: an ordered ladder of points thresholds, defined by config."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from omnirec.domain.errors import InvalidArgument


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    min_points: int = Field(ge=0)


DEFAULT_TIERS = (
    Tier(name="basic", min_points=0),
    Tier(name="silver", min_points=1_000),
    Tier(name="gold", min_points=5_000),
    Tier(name="platinum", min_points=20_000),
)


class TierLadder(BaseModel):
    """Tiers from lowest to highest; a member holds the highest tier whose threshold their points reach."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    points_per_unit: float = Field(5.0, ge=0)
    """Loyalty points a member earns per currency unit spent (live purchases and the simulator)."""

    @model_validator(mode="after")
    def _check_order(self) -> TierLadder:
        if not self.tiers or self.tiers[0].min_points != 0:
            raise ValueError("the lowest tier must start at 0 points")
        thresholds = [t.min_points for t in self.tiers]
        if thresholds != sorted(set(thresholds)):
            raise ValueError("tier thresholds must strictly increase")
        if len({t.name for t in self.tiers}) != len(self.tiers):
            raise ValueError("tier names must be unique")
        return self

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tiers]

    def tier_codes(self, points: np.ndarray) -> np.ndarray:
        """Ladder positions for many members at once (the batch form of `tier_for`)."""
        pts = np.asarray(points, dtype=np.float64)
        if (pts < 0).any() or np.isnan(pts).any():
            raise InvalidArgument("points", "must be >= 0 and not NaN")
        thresholds = np.array([t.min_points for t in self.tiers], dtype=np.float64)
        return (np.searchsorted(thresholds, pts, side="right") - 1).astype(np.int8)

    def tier_for(self, points: float) -> str:
        return self.tiers[int(self.tier_codes(np.array([points]))[0])].name

    def rank(self, tier: str) -> int:
        """Position on the ladder (0 = lowest), for "gold and above" style comparisons."""
        for i, t in enumerate(self.tiers):
            if t.name == tier:
                return i
        raise InvalidArgument("tier", f"unknown tier {tier!r}; ladder is {', '.join(self.names)}")

    def at_least(self, tier: str, minimum: str) -> bool:
        return self.rank(tier) >= self.rank(minimum)

    def upgraded(self, current: str, points: float) -> str:
        """Tier after earning points: live events only move members up; downgrades wait for the batch job."""
        earned = self.tier_for(points)
        return earned if self.rank(earned) > self.rank(current) else current
