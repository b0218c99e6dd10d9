"""Typed views of what the store holds, and their strict decoding from Redis values.

Decoding is strict on purpose: a malformed value or a missing field raises `FeatureStoreError` naming the
key and field, so bad data is reported instead of being served.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from omnirec.domain.lifecycle import LifecycleRules, lifecycle_stage
from omnirec.domain.profile import ColdStartProfile, preferred_channels
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.packed import unpack

TS = "_ts"
"""Every hash carries `_ts`: unix seconds at which it was written."""

CHANNELS: tuple[Channel, ...] = tuple(Channel)
ACTIVITY_FIELDS = tuple(f"act_{c.value}" for c in CHANNELS)
CONSENT_FIELDS = tuple(f"consent_{c.value}" for c in CHANNELS)
PROFILE_FIELDS: tuple[str, ...] = (
    "tier", "lifecycle_stage", "recency_score", "frequency_score", "monetary_score", "points", "home_store",
    "region", *ACTIVITY_FIELDS, *CONSENT_FIELDS, "signup_ts", "last_seen_ts", "last_purchase_ts",
    "prev_purchase_ts", TS,
)
"""Fields of a packed member record, in order (`feature_store.packed`). Empty string = no value."""
PROFILE_POSITION = {f: i for i, f in enumerate(PROFILE_FIELDS)}
ITEM_FIELDS: tuple[str, ...] = ("price", "category", "brand", "price_band", TS)

T = TypeVar("T")


def _decode(raw: Mapping[bytes, bytes], key: str, fields: tuple[str, ...]) -> dict[str, str]:
    values = {k.decode(): v.decode() for k, v in raw.items()}
    missing = [f for f in fields if f not in values]
    if missing:
        raise FeatureStoreError(f"{key}: malformed hash, missing field(s) {missing}")
    return values


def _parse(key: str, field: str, value: str, convert: Callable[[str], T]) -> T:
    try:
        return convert(value)
    except ValueError:
        raise FeatureStoreError(f"{key}: field {field!r} has malformed value {value!r}") from None


def _optional_ts(key: str, field: str, value: str) -> float | None:
    return None if value == "" else _parse(key, field, value, float)


def _score(value: str) -> int:
    score = int(value)
    if not 0 <= score <= 5:
        raise ValueError(value)
    return score


def _nonempty(value: str) -> str:
    if not value:
        raise ValueError(value)
    return value


def _flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(value)
    return value == "1"


@dataclass(frozen=True)
class MemberProfile:
    """A member's features. RFM scores are quintiles 1..5 among buyers (5 best), 0 for never bought."""

    member_id: str
    tier: str
    lifecycle_stage: LifecycleStage
    recency_score: int
    frequency_score: int
    monetary_score: int
    points: int
    home_store: str
    region: str
    """Region of the home store."""
    activity: Mapping[Channel, int]
    consent: Mapping[Channel, bool]
    signup_ts: float
    last_seen_ts: float | None
    last_purchase_ts: float | None
    prev_purchase_ts: float | None
    written_ts: float

    @classmethod
    def from_packed(cls, member_id: str, key: str, raw: bytes) -> MemberProfile:
        fields = unpack(raw)
        if len(fields) != len(PROFILE_FIELDS):
            raise FeatureStoreError(f"{key}: malformed member record, {len(fields)} fields instead of "
                                    f"{len(PROFILE_FIELDS)} ({', '.join(PROFILE_FIELDS)})")
        v = dict(zip(PROFILE_FIELDS, fields, strict=True))

        def num(field: str, convert: Callable[[str], T]) -> T:
            return _parse(key, field, v[field], convert)

        return cls(
            member_id=member_id,
            tier=num("tier", _nonempty),
            lifecycle_stage=num("lifecycle_stage", LifecycleStage),
            recency_score=num("recency_score", _score),
            frequency_score=num("frequency_score", _score),
            monetary_score=num("monetary_score", _score),
            points=num("points", int),
            home_store=v["home_store"],
            region=v["region"],
            activity={c: num(f, int) for c, f in zip(CHANNELS, ACTIVITY_FIELDS, strict=True)},
            consent={c: num(f, _flag) for c, f in zip(CHANNELS, CONSENT_FIELDS, strict=True)},
            signup_ts=num("signup_ts", float),
            last_seen_ts=_optional_ts(key, "last_seen_ts", v["last_seen_ts"]),
            last_purchase_ts=_optional_ts(key, "last_purchase_ts", v["last_purchase_ts"]),
            prev_purchase_ts=_optional_ts(key, "prev_purchase_ts", v["prev_purchase_ts"]),
            written_ts=num(TS, float),
        )

    @property
    def preferred_channel(self) -> Channel | None:
        """The channel with the most events, from the live activity counts (`domain.profile.preferred_channels`)."""
        name = str(preferred_channels(np.array([self.activity[c] for c in CHANNELS]))[0])
        return Channel(name) if name else None

    def cold_start(self) -> ColdStartProfile:
        """What the content model scores this member from; the same fields training gave every member."""
        channel = self.preferred_channel
        return ColdStartProfile(tier=self.tier, lifecycle_stage=self.lifecycle_stage.value,
                                channel=channel.value if channel else None, region=self.region or None)

    def stage_at(self, rules: LifecycleRules, now: float) -> LifecycleStage:
        """The stage at `now` from the stored timestamps (stages drift as time passes without events)."""
        return lifecycle_stage(rules, now, self.signup_ts, self.last_purchase_ts, self.prev_purchase_ts)


@dataclass(frozen=True)
class ItemFeatures:
    item_id: str
    price: float
    category: str
    brand: str
    price_band: str

    @classmethod
    def from_hash(cls, item_id: str, key: str, raw: Mapping[bytes, bytes]) -> ItemFeatures:
        v = _decode(raw, key, ITEM_FIELDS)
        price = _parse(key, "price", v["price"], float)
        if not math.isfinite(price) or price < 0:
            raise FeatureStoreError(f"{key}: field 'price' has malformed value {v['price']!r}")
        return cls(item_id, price, v["category"], v["brand"], v["price_band"])


def parse_stock(key: str, item_id: str, value: bytes | None) -> int:
    """Units on hand (0 when the store does not carry the item); negative live counts read as 0."""
    if value is None:
        return 0
    return max(_parse(key, item_id, value.decode(), int), 0)
