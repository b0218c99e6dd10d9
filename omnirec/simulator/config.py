"""Parameters of a simulated retailer; validated so bad sizes or channel names fail with a clear message."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from omnirec.domain.clock import DAY
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel

# 2026-10-31 00:00 UTC: a fixed end of history, so a seed always gives the same files.
DEFAULT_END_TS = 1_793_404_800


class SimulationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_members: int = Field(1_000, ge=1, description="members in the loyalty programme")
    n_items: int = Field(500, ge=10, description="items in the catalogue")
    n_stores: int | None = Field(None, ge=1, description="physical stores (default: one per 5,000 members, 3..500)")
    days: int = Field(365, ge=30, description="days of history to generate")
    end_ts: int = Field(DEFAULT_END_TS, ge=0, description="unix seconds at which history ends")
    seed: int = 0
    channels: tuple[Channel, ...] = tuple(Channel)
    sessions_per_member: float = Field(14.0, gt=0, description="mean sessions per member per active year")
    anonymous_share: float = Field(0.1, ge=0, le=1, description="share of browse-only online sessions not logged in")
    store_assortment: int = Field(2_000, ge=1, description="items stocked per physical store")
    chunk_members: int = Field(50_000, ge=1, description="members generated per batch (bounds memory)")
    tiers: TierLadder = TierLadder()

    @field_validator("channels", mode="before")
    @classmethod
    def _known_channels(cls, value: object) -> object:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        allowed = {c.value for c in Channel}
        unknown = [v for v in value if str(v) not in allowed]  # type: ignore[union-attr]
        if unknown:
            raise ValueError(f"unknown channel(s) {unknown}; expected some of {sorted(allowed)}")
        if not value:
            raise ValueError("at least one channel is needed")
        return value

    @property
    def stores(self) -> int:
        return self.n_stores or min(500, max(3, self.n_members // 5_000))

    @property
    def start_ts(self) -> int:
        return self.end_ts - self.days * DAY
