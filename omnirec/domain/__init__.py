"""Shared vocabulary, entities, business rules and errors of omnirec.

Nothing here imports grpc or redis: every other package depends on this one, never the reverse.
"""

from omnirec.domain.errors import (
    DataError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OmnirecError,
    PermissionDenied,
    Unavailable,
)
from omnirec.domain.idmap import IdMap
from omnirec.domain.lifecycle import LifecycleRules, lifecycle_stage
from omnirec.domain.tiers import Tier, TierLadder
from omnirec.domain.vocab import Channel, EventType, LifecycleStage

__all__ = [
    "Channel",
    "DataError",
    "EventType",
    "FailedPrecondition",
    "IdMap",
    "InvalidArgument",
    "LifecycleRules",
    "LifecycleStage",
    "NotFound",
    "OmnirecError",
    "PermissionDenied",
    "Tier",
    "TierLadder",
    "Unavailable",
    "lifecycle_stage",
]
