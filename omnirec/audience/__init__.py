"""Campaign audiences: who should get an offer, scored over every member at once, filtered and suppressed
by the same rules as the real-time offer decisions, with a stable holdout carve-out; and the lift read
back from confirmed sends. No grpc here: the stores are passed in."""

from omnirec.audience.builder import AudienceBuilder, AudienceCancelled, AudienceSources, FactorModel
from omnirec.audience.campaigns import Campaigns, sends
from omnirec.audience.lift import LiftEstimate, Send, estimate_lift
from omnirec.audience.model import (
    Audience,
    AudienceRequest,
    AudienceRows,
    AudienceSummary,
    MemberVerdict,
    RankBy,
    Suppression,
)

__all__ = ["Audience", "AudienceBuilder", "AudienceCancelled", "AudienceRequest", "AudienceRows", "AudienceSources",
           "AudienceSummary",
           "Campaigns", "FactorModel", "LiftEstimate", "MemberVerdict", "RankBy", "Send", "Suppression",
           "estimate_lift", "sends"]
