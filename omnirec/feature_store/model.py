"""Typed views of what the store holds, and their strict decoding from Redis values.

Decoding is strict on purpose: a malformed value or a missing field raises `FeatureStoreError` naming the
key and field, so bad data is reported instead of being served.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omnirec.domain.lifecycle import LifecycleRules, lifecycle_stage
from omnirec.domain.profile import ColdStartProfile, preferred_channels
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.packed import SEP, unpack

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


class _Rejected(Exception):
    """A chunk the column decoder leaves to the per-member parser (which raises, or accepts a spelling Arrow
    does not, such as `int(" 5")`)."""


@dataclass(frozen=True)
class ProfileColumns:
    """Many members' profiles column-wise, the fields the campaign filters and the offer rules read (an
    audience walks a million members: one `MemberProfile` each cost more than the rules themselves).

    Row i is `member_ids[i]`; `present` is False where the store has no record, and there the text columns
    are "" and the timestamps NaN. `from_packed` gives the values `MemberProfile.from_packed` gives member by
    member, and raises its errors (`tests/feature_store/test_profile_columns.py`)."""

    member_ids: np.ndarray
    present: np.ndarray
    tier: np.ndarray
    home_store: np.ndarray
    region: np.ndarray
    consent: Mapping[Channel, np.ndarray]
    signup_ts: np.ndarray
    last_purchase_ts: np.ndarray
    """NaN: never purchased (or no record)."""
    prev_purchase_ts: np.ndarray

    def __len__(self) -> int:
        return len(self.member_ids)

    @classmethod
    def from_profiles(cls, member_ids: Sequence[str], profiles: Sequence[MemberProfile | None]) -> ProfileColumns:
        """Columns of parsed profiles (None: no record)."""
        nan = float("nan")

        def column(get: Callable[[MemberProfile], object], missing: object, dtype: object) -> np.ndarray:
            return np.array([missing if p is None else get(p) for p in profiles], dtype)  # type: ignore[call-overload]

        def ts(value: float | None) -> float:
            return nan if value is None else value

        return cls(
            member_ids=np.array(list(member_ids), object),
            present=np.array([p is not None for p in profiles], bool),
            tier=column(lambda p: p.tier, "", object),
            home_store=column(lambda p: p.home_store, "", object),
            region=column(lambda p: p.region, "", object),
            consent={c: column(lambda p, c=c: p.consent[c], False, bool) for c in CHANNELS},  # type: ignore[misc]
            signup_ts=column(lambda p: p.signup_ts, nan, np.float64),
            last_purchase_ts=column(lambda p: ts(p.last_purchase_ts), nan, np.float64),
            prev_purchase_ts=column(lambda p: ts(p.prev_purchase_ts), nan, np.float64),
        )

    @classmethod
    def from_packed(cls, member_ids: Sequence[str], key: Callable[[str], str],
                    raws: Sequence[bytes | None]) -> ProfileColumns:
        """Decode a chunk's packed records (None: no record) with Arrow kernels over all of them at once; a
        chunk with any value those kernels refuse is parsed member by member, so a malformed record raises
        `FeatureStoreError` naming its key and field exactly as a request's read would."""
        try:
            return cls._decode(member_ids, raws)
        except (pa.ArrowInvalid, _Rejected):
            return cls.from_profiles(member_ids, [None if raw is None else MemberProfile.from_packed(m, key(m), raw)
                                                  for m, raw in zip(member_ids, raws, strict=True)])

    @classmethod
    def _decode(cls, member_ids: Sequence[str], raws: Sequence[bytes | None]) -> ProfileColumns:
        n, width = len(raws), len(PROFILE_FIELDS)
        values = pa.array(raws, pa.binary()).cast(pa.string())  # UTF-8 checked, as bytes.decode()
        present = values.is_valid().to_numpy(zero_copy_only=False)
        split = pc.split_pattern(values, SEP)
        lengths = pc.list_value_length(split).to_numpy(zero_copy_only=False)
        if np.any(lengths[present] != width):
            raise _Rejected
        flat = split.flatten()
        rows = np.flatnonzero(present)

        def field(name: str) -> pa.Array:
            return flat.take(pa.array(np.arange(PROFILE_POSITION[name], len(flat), width)))

        def check(ok: object) -> None:
            if not pc.all(ok).as_py():
                raise _Rejected

        def number(name: str, kind: pa.DataType) -> pa.Array:
            return pc.cast(field(name), kind)

        def text(name: str) -> np.ndarray:
            out = np.full(n, "", object)
            out[rows] = field(name).to_numpy(zero_copy_only=False)
            return out

        def timestamps(name: str, optional: bool) -> np.ndarray:
            column = field(name)
            if optional:
                column = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
            out = np.full(n, np.nan)
            out[rows] = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
            return out

        check(pc.greater(pc.binary_length(field("tier")), 0))
        check(pc.is_in(field("lifecycle_stage"), value_set=pa.array([s.value for s in LifecycleStage])))
        for name in ("recency_score", "frequency_score", "monetary_score"):
            score = number(name, pa.int64())
            check(pc.and_(pc.greater_equal(score, 0), pc.less_equal(score, 5)))
        for name in ("points", *ACTIVITY_FIELDS):
            number(name, pa.int64())
        consent = {}
        for channel, name in zip(CHANNELS, CONSENT_FIELDS, strict=True):
            flag = field(name)
            check(pc.is_in(flag, value_set=pa.array(["0", "1"])))
            consent[channel] = np.zeros(n, bool)
            consent[channel][rows] = pc.equal(flag, "1").to_numpy(zero_copy_only=False)
        timestamps("last_seen_ts", optional=True)
        timestamps(TS, optional=False)
        return cls(
            member_ids=np.array(list(member_ids), object), present=present, tier=text("tier"),
            home_store=text("home_store"), region=text("region"), consent=consent,
            signup_ts=timestamps("signup_ts", optional=False),
            last_purchase_ts=timestamps("last_purchase_ts", optional=True),
            prev_purchase_ts=timestamps("prev_purchase_ts", optional=True))


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
