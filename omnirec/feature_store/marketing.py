"""Coupon wallet and contact ledger: the durable records that offer caps, budgets and redemption read.

Both live under the durable key space (they survive re-materialisation). The offers engine calls these
APIs; `FeatureReader.read_request` also returns a member's wallet and recent contacts in its one round
trip through `queue_wallet`/`parse_wallet` and `queue_contacts`/`parse_contacts`.

Wallet: hash `wallet:{member}`, field = coupon id, value = the coupon as compact JSON. A coupon is
`issued` until redeemed or past `expires_ts`, when it reads as `expired` (derived, never rewritten).
Ledger: sorted set `contacts:{member}`, score = contact time, member = JSON `[decision_id, offer_id,
channel]`; entries older than `contact_ttl_s` are trimmed on every write.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from enum import StrEnum

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from omnirec.domain.errors import NotFound
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import FeatureStoreError, redis_unavailable
from omnirec.feature_store.keys import Keys

Pipeline = redis.client.Pipeline


class CouponStatus(StrEnum):
    ISSUED = "issued"
    REDEEMED = "redeemed"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Coupon:
    coupon_id: str
    member_id: str
    offer_id: str
    decision_id: str
    issued_ts: float
    expires_ts: float
    value: float = 0.0
    """Face value (money off, or the points multiplier); what a budget is charged."""
    redeemed_ts: float | None = None
    redemption_id: str | None = None

    def status_at(self, now: float) -> CouponStatus:
        if self.redeemed_ts is not None:
            return CouponStatus.REDEEMED
        return CouponStatus.EXPIRED if now >= self.expires_ts else CouponStatus.ISSUED

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> Coupon:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise FeatureStoreError(f"{key}: malformed coupon {raw[:200]!r}: {exc}") from None


@dataclass(frozen=True)
class Wallet:
    """A member's coupons at `now`, with the counts caps read."""

    coupons: tuple[Coupon, ...]
    now: float

    def by_status(self, status: CouponStatus) -> tuple[Coupon, ...]:
        return tuple(c for c in self.coupons if c.status_at(self.now) is status)

    def count(self, status: CouponStatus, offer_id: str | None = None) -> int:
        return sum(1 for c in self.by_status(status) if offer_id is None or c.offer_id == offer_id)


@dataclass(frozen=True)
class Contact:
    ts: float
    channel: Channel
    offer_id: str
    decision_id: str


@dataclass(frozen=True)
class ContactHistory:
    """Contacts since `since_ts`, oldest first; `count` answers per-member caps and fatigue rules."""

    contacts: tuple[Contact, ...]
    since_ts: float

    def count(self, since_ts: float | None = None, channel: Channel | str | None = None,
              offer_id: str | None = None) -> int:
        since = self.since_ts if since_ts is None else since_ts
        if since < self.since_ts:
            raise ValueError(f"history starts at {self.since_ts}; cannot count contacts since {since}")
        return sum(1 for c in self.contacts if c.ts >= since and (channel is None or c.channel == channel)
                   and (offer_id is None or c.offer_id == offer_id))


def queue_wallet(pipe: Pipeline, keys: Keys, member_id: str) -> None:
    pipe.hgetall(keys.wallet(member_id))


def parse_wallet(keys: Keys, member_id: str, raw: dict[bytes, bytes], now: float) -> Wallet:
    key = keys.wallet(member_id)
    coupons = sorted((Coupon.from_json(key, v) for v in raw.values()), key=lambda c: (c.issued_ts, c.coupon_id))
    return Wallet(tuple(coupons), now)


def queue_contacts(pipe: Pipeline, keys: Keys, member_id: str, since_ts: float) -> None:
    pipe.zrangebyscore(keys.contacts(member_id), since_ts, "+inf", withscores=True)


def parse_contacts(keys: Keys, member_id: str, raw: list[tuple[bytes, float]], since_ts: float) -> ContactHistory:
    contacts = []
    for entry, ts in raw:
        try:
            decision_id, offer_id, channel = json.loads(entry)
            contacts.append(Contact(float(ts), Channel(channel), str(offer_id), str(decision_id)))
        except ValueError:
            raise FeatureStoreError(f"{keys.contacts(member_id)}: malformed contact {entry[:200]!r}") from None
    return ContactHistory(tuple(contacts), since_ts)


_REDEEM = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {0, false} end
local coupon = cjson.decode(raw)
if coupon['redeemed_ts'] ~= cjson.null then return {2, raw} end
coupon['redeemed_ts'] = tonumber(ARGV[2])
coupon['redemption_id'] = ARGV[3]
local updated = cjson.encode(coupon)
redis.call('HSET', KEYS[1], ARGV[1], updated)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, updated}
"""
"""Check-and-set in one step, so concurrent or retried redemptions record exactly one."""


@dataclass(frozen=True)
class Redemption:
    coupon: Coupon
    first_time: bool
    """False when this coupon had already been redeemed (a retry): the caller must not count it again."""


class MarketingStore:
    """Wallet and contact-ledger writes and reads for the offers engine (all durable keys)."""

    def __init__(self, client: redis.Redis | RedisCluster, config: RedisConfig) -> None:
        self.client = client
        self.config = config
        self.keys = Keys(config.namespace)
        self._redeem: Script = client.register_script(_REDEEM)

    def issue_coupon(self, coupon: Coupon) -> bool:
        """Put `coupon` in its member's wallet; False (and no change) if that coupon id is already there."""
        key = self.keys.wallet(coupon.member_id)
        with redis_unavailable("issue_coupon"):
            pipe = self.client.pipeline(transaction=False)
            pipe.hsetnx(key, coupon.coupon_id, coupon.to_json())
            pipe.expire(key, self.config.wallet_ttl_s)
            created, _ = pipe.execute()
        return bool(created)

    def redeem_coupon(self, member_id: str, coupon_id: str, redemption_id: str, ts: float | None = None) -> Redemption:
        """Mark a coupon redeemed once (idempotent); `NotFound` if the member holds no such coupon."""
        key = self.keys.wallet(member_id)
        now = time.time() if ts is None else ts
        with redis_unavailable("redeem_coupon"):
            code, raw = self._redeem(keys=[key], args=[coupon_id, now, redemption_id, self.config.wallet_ttl_s])
        if int(code) == 0:
            raise NotFound(f"member {member_id!r} holds no coupon {coupon_id!r}")
        return Redemption(Coupon.from_json(key, raw), first_time=int(code) == 1)

    def wallet(self, member_id: str, now: float | None = None) -> Wallet:
        with redis_unavailable("wallet"):
            raw = self.client.hgetall(self.keys.wallet(member_id))
        return parse_wallet(self.keys, member_id, raw, time.time() if now is None else now)

    def record_contact(self, member_id: str, offer_id: str, channel: Channel | str, decision_id: str,
                       ts: float | None = None) -> None:
        """Log that `offer_id` was shown to the member on `channel`; trims entries past retention."""
        now = time.time() if ts is None else ts
        entry = json.dumps([decision_id, offer_id, Channel(channel).value], separators=(",", ":"))
        key = self.keys.contacts(member_id)
        with redis_unavailable("record_contact"):
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(key, {entry: now})
            pipe.zremrangebyscore(key, "-inf", now - self.config.contact_ttl_s)
            pipe.expire(key, self.config.contact_ttl_s)
            pipe.execute()

    def contact_history(self, member_id: str, since_ts: float) -> ContactHistory:
        with redis_unavailable("contact_history"):
            pipe = self.client.pipeline(transaction=False)
            queue_contacts(pipe, self.keys, member_id, since_ts)
            (raw,) = pipe.execute()
        return parse_contacts(self.keys, member_id, raw, since_ts)

    def contacts_since(self, member_id: str, since_ts: float, channel: Channel | str | None = None,
                       offer_id: str | None = None) -> int:
        """How many contacts the member had since `since_ts`, optionally on one channel / for one offer."""
        return self.contact_history(member_id, since_ts).count(since_ts, channel, offer_id)
