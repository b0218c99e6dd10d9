"""Typed request, rows and summary of an audience pull."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from omnirec.domain.errors import InvalidArgument
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.offers.catalogue import Target

MAX_AUDIENCE = 10_000_000


class RankBy(StrEnum):
    AFFINITY = "affinity"
    """The member's best inner product with the target's items (collaborative factors)."""
    UPLIFT = "uplift"
    """Estimated incremental conversion probability from the uplift model (p_treated - p_control)."""


class Suppression(StrEnum):
    """Why a scored member is not in the audience. The values shared with the offer decisions are the
    `offers.policy.Rule` strings, so a campaign and the app explain a member the same way."""

    BELOW_MIN_SCORE = "below_min_score"
    NO_PROFILE = "no_profile"
    """Scored by the model but absent from the feature store (not materialised, or erased)."""
    FILTERED_TIER = "filtered_tier"
    FILTERED_STAGE = "filtered_stage"
    FILTERED_STORE = "filtered_store"
    FILTERED_REGION = "filtered_region"
    NO_CONSENT = "no_consent"
    NOT_ELIGIBLE_TIER = "not_eligible_tier"
    NOT_ELIGIBLE_LIFECYCLE = "not_eligible_lifecycle"
    HOLDOUT = "holdout"
    """In the offer's own holdout (the catalogue's `holdout_share`), which no channel may contact."""
    CAP_REACHED = "cap_reached"
    FATIGUE_CAP = "fatigue_cap"
    ALREADY_REDEEMED = "already_redeemed"
    NOT_SCORED = "not_scored"
    """Explain only: the model (or the uplift model) has no score for the member."""


@dataclass(frozen=True)
class AudienceRequest:
    channel: Channel
    """The channel the campaign sends on: consent, fatigue and the offer's channels are checked for it."""
    max_size: int
    offer_id: str = ""
    target: Target | None = None
    """Items, categories or brands to score against when no offer is given."""
    tiers: frozenset[str] = frozenset()
    stages: frozenset[LifecycleStage] = frozenset()
    home_stores: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    """Regions of the members' home stores."""
    min_score: float | None = None
    rank_by: RankBy = RankBy.AFFINITY
    holdout_share: float = 0.0
    """Share of the audience carved out as this send's control group: listed and flagged, not dropped."""
    send_id: str = ""
    """Names the send; the carve-out is a stable hash of (send_id, member), so pulls repeat exactly."""

    def validate(self, ladder: TierLadder) -> None:
        if not 1 <= self.max_size <= MAX_AUDIENCE:
            raise InvalidArgument("max_size", f"must be between 1 and {MAX_AUDIENCE:,} (got {self.max_size})")
        if not self.offer_id and self.target is None:
            raise InvalidArgument("target", "set offer_id, or item_ids, category_ids or brand_ids")
        if self.offer_id and self.target is not None:
            raise InvalidArgument("target", "set either offer_id or an explicit target, not both")
        if self.target is not None and self.target.scope == "basket":
            raise InvalidArgument("target", "a whole-basket target has no items to score; name an offer instead")
        unknown = sorted(self.tiers - set(ladder.names))
        if unknown:
            raise InvalidArgument("tiers", f"unknown tier {unknown[0]!r}; tiers are {', '.join(ladder.names)}")
        if not 0.0 <= self.holdout_share < 1.0:
            raise InvalidArgument("holdout_share", f"must be in [0, 1) (got {self.holdout_share})")
        if self.holdout_share > 0 and not self.send_id:
            raise InvalidArgument("send_id", "required with a holdout_share (the carve-out is keyed by it)")
        if self.min_score is not None and not np.isfinite(self.min_score):
            raise InvalidArgument("min_score", f"must be finite (got {self.min_score})")


@dataclass(frozen=True)
class AudienceRows:
    """The audience, best first, column-wise (a million rows stay a few arrays)."""

    member_ids: np.ndarray
    scores: np.ndarray
    tiers: np.ndarray
    stages: np.ndarray
    holdout: np.ndarray
    """In this send's carve-out: do not send, keep for the lift read-out."""
    start_rank: int = 1
    """The rank of the first row (a chunk of a longer audience starts further down)."""

    def __len__(self) -> int:
        return len(self.member_ids)

    @property
    def ranks(self) -> np.ndarray:
        return np.arange(self.start_rank, self.start_rank + len(self), dtype=np.int64)

    @classmethod
    def empty(cls) -> AudienceRows:
        return cls(np.array([], object), np.array([], np.float32), np.array([], object), np.array([], object),
                   np.array([], bool))


@dataclass(frozen=True)
class AudienceSummary:
    """An audience without its rows: what a stream says before the first row (the stream's header)."""

    total: int
    holdout: int
    examined: int
    scored: int
    suppressed: Mapping[Suppression, int]
    model_version: str
    feature_generation: int
    catalogue_version: str


@dataclass(frozen=True)
class Audience:
    rows: AudienceRows
    examined: int
    """Members read from the stores before the audience was full (the summary counts are over these)."""
    scored: int
    """Members with a score (the model's members, or the uplift model's)."""
    suppressed: Mapping[Suppression, int]
    model_version: str
    feature_generation: int
    catalogue_version: str
    timings: Mapping[str, float] = field(default_factory=dict)
    """Seconds per stage: `scoring`, `suppression`."""

    @property
    def holdout_count(self) -> int:
        return int(self.rows.holdout.sum())

    @property
    def summary(self) -> AudienceSummary:
        return AudienceSummary(len(self.rows), self.holdout_count, self.examined, self.scored, self.suppressed,
                               self.model_version, self.feature_generation, self.catalogue_version)

    def chunks(self, size: int) -> Iterator[AudienceRows]:
        """The rows, best first, `size` at a time (the ranks stay the audience's: use `start_rank`)."""
        rows = self.rows
        for start in range(0, len(rows), size):
            part = slice(start, start + size)
            yield AudienceRows(rows.member_ids[part], rows.scores[part], rows.tiers[part], rows.stages[part],
                               rows.holdout[part], start_rank=start + 1)


@dataclass(frozen=True)
class MemberVerdict:
    """Explain mode: what the audience would do with one member, and why."""

    member_id: str
    score: float | None
    included: bool
    suppression: Suppression | None
    detail: str
    holdout: bool
