"""Shared vocabulary, entities, business rules and errors of omnirec.

Nothing here imports grpc or redis: every other package depends on this one, never the reverse.
"""

from domain.errors import (
    DataError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OmnirecError,
    PermissionDenied,
    Unavailable,
)
from domain.idmap import IdMap
from domain.lifecycle import LifecycleRules, lifecycle_stage
from domain.tiers import Tier, TierLadder
from domain.vocab import Channel, EventType, LifecycleStage

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
