"""The cold-start profile: what the content model knows of a member, the same at training and serving.

Training writes one side-feature column per field value (`tier=gold`, `region=north`); serving builds the
same profile from the feature store and looks those names up in the bundle. Both name features through
`feature_name`, so a field that one side fills and the other does not is a bug a test can see.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import numpy as np

from omnirec.domain.vocab import Channel


@dataclass(frozen=True)
class ColdStartProfile:
    """Profile fields of a member; None where unknown (no feature, rather than a made-up value)."""

    tier: str | None = None
    lifecycle_stage: str | None = None
    channel: str | None = None
    """The member's preferred channel: the one with the most events (`preferred_channels`)."""
    region: str | None = None
    """Region of the member's home store."""

    def feature_names(self) -> list[str]:
        """The side-feature names training gave this profile's values, in field order."""
        return [feature_name(key, value) for key, value in zip(PROFILE_KEYS, astuple(self), strict=True) if value]


PROFILE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(ColdStartProfile))


def feature_name(key: str, value: str) -> str:
    return f"{key}={value}"


CHANNEL_NAMES = np.array([c.value for c in Channel])


def preferred_channels(activity: np.ndarray) -> np.ndarray:
    """The busiest channel per row of event counts (columns in `Channel` order), "" for a row without events;
    a tie goes to the channel listed first. Training and the feature store both call this."""
    activity = np.atleast_2d(activity)
    return np.where(activity.sum(axis=1) > 0, CHANNEL_NAMES[activity.argmax(axis=1)], "")
