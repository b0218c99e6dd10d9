"""Offer state on Redis, and its only writer: coupons (wallets), the contact ledger, budgets, decisions.

Every state change that must hold under concurrency is one Lua script, so Redis runs it atomically:
issuing a coupon checks the request id, the member's cap, the channel's fatigue cap and the offer's count
and money budgets, then reserves and records everything, or changes nothing. Money is kept in integer
cents so repeated reservations never drift. The scripts touch several keys (a member's and an offer's),
so they need a single Redis, not a Redis Cluster. Keys come from `feature_store.keys` (durable key space:
offer state survives re-materialisation); `feature_store/FORMAT.md` documents the layout.

Wallet: hash `wallet:{member}`, field = coupon id, value = the coupon as compact JSON. A coupon is
`issued` until redeemed or past `expires_ts`, when it reads as `expired` (derived, never rewritten).
Ledger: sorted set `contacts:{member}`, score = contact time, member = JSON `[decision_id, offer_id,
channel]`; entries older than `contact_ttl_s` are trimmed on every write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import redis

from omnirec.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import FeatureStoreError, redis_unavailable
from omnirec.feature_store.keys import Keys
from omnirec.offers.catalogue import Cap, Offer

DAY = 86_400.0

_ISSUE = """
local stored = redis.call('GET', KEYS[1])
if stored then return {'replayed', stored} end
local max_count, max_cents, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count = tonumber(redis.call('HGET', KEYS[2], 'issued') or '0')
local cents = tonumber(redis.call('HGET', KEYS[2], 'reserved_cents') or '0')
if (max_count >= 0 and count + 1 > max_count) or (max_cents >= 0 and cents + cost > max_cents) then
  return {'budget_exhausted', ''}
end
local cap, fatigue = tonumber(ARGV[7]), tonumber(ARGV[9])
if cap >= 0 or fatigue >= 0 then
  local since = math.min(tonumber(ARGV[8]), tonumber(ARGV[10]))
  local entries = redis.call('ZRANGEBYSCORE', KEYS[3], since, '+inf', 'WITHSCORES')
  local mine, channel = 0, 0
  for i = 1, #entries, 2 do
    local contact = cjson.decode(entries[i])
    local ts = tonumber(entries[i + 1])
    if contact[2] == ARGV[11] and ts >= tonumber(ARGV[8]) then mine = mine + 1 end
    if contact[3] == ARGV[12] and ts >= tonumber(ARGV[10]) then channel = channel + 1 end
  end
  if cap >= 0 and mine >= cap then return {'cap_reached', tostring(mine)} end
  if fatigue >= 0 and channel >= fatigue then return {'fatigue_cap', tostring(channel)} end
end
redis.call('HINCRBY', KEYS[2], 'issued', 1)
redis.call('HINCRBY', KEYS[2], 'reserved_cents', cost)
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[13])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[5]) - tonumber(ARGV[14]))
redis.call('EXPIRE', KEYS[3], ARGV[14])
redis.call('HSETNX', KEYS[4], ARGV[15], ARGV[16])
redis.call('EXPIRE', KEYS[4], ARGV[17])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[6])
return {'issued', ''}
"""
"""KEYS: idempotency, budget, contacts, wallet. ARGV: 1 decision json, 2 max count, 3 max cents, 4 cost cents,
5 now, 6 idempotency ttl, 7 cap count, 8 cap since, 9 fatigue count, 10 fatigue since, 11 offer id,
12 channel, 13 contact entry, 14 contact ttl, 15 coupon id, 16 coupon json, 17 wallet ttl.
Negative limits mean "no limit"."""

_RESERVE = """
local max_count, max_cents, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local count = tonumber(redis.call('HGET', KEYS[1], 'issued') or '0')
local cents = tonumber(redis.call('HGET', KEYS[1], 'reserved_cents') or '0')
if (max_count >= 0 and count + 1 > max_count) or (max_cents >= 0 and cents + cost > max_cents) then return 0 end
redis.call('HINCRBY', KEYS[1], 'issued', 1)
redis.call('HINCRBY', KEYS[1], 'reserved_cents', cost)
return 1
"""
"""KEYS: budget. ARGV: 1 max count, 2 max cents, 3 cost cents. Budget only: invitations shown by NextBestOffer."""

_REDEEM = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {0, ''} end
local coupon = cjson.decode(raw)
if coupon['redeemed_ts'] ~= cjson.null then return {2, raw} end
coupon['redeemed_ts'] = tonumber(ARGV[2])
coupon['redemption_id'] = ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(coupon))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HINCRBY', KEYS[2], 'redeemed', 1)
redis.call('HINCRBY', KEYS[2], 'spent_cents', ARGV[5])
redis.call('HINCRBY', KEYS[3], 'redemptions', 1)
redis.call('HSET', KEYS[3], 'last_redeem_ts', ARGV[2])
return {1, raw}
"""
"""KEYS: wallet, budget, member offer stats. ARGV: 1 coupon id, 2 now, 3 redemption id, 4 wallet ttl,
5 discount cents. Check-and-set in one step, so concurrent or retried redemptions record exactly one."""


def cents(money: float) -> int:
    return int(round(money * 100))


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
    """A member's coupons at `now`, oldest first."""

    coupons: tuple[Coupon, ...]
    now: float

    def by_status(self, status: CouponStatus) -> tuple[Coupon, ...]:
        return tuple(c for c in self.coupons if c.status_at(self.now) is status)


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


@dataclass(frozen=True)
class BudgetUsage:
    issued: int
    reserved_cents: int
    redeemed: int
    spent_cents: int


@dataclass(frozen=True)
class IssueResult:
    outcome: str
    """`issued`, `replayed`, `budget_exhausted`, `cap_reached` or `fatigue_cap`."""
    stored: dict[str, Any] | None = None
    """The decision stored earlier under the request id (for `replayed`)."""


def _contact_entry(decision_id: str, offer_id: str, channel: Channel | str) -> str:
    return json.dumps([decision_id, offer_id, Channel(channel).value], separators=(",", ":"))


def parse_contacts(key: str, raw: list[tuple[bytes, float]], since_ts: float) -> ContactHistory:
    contacts = []
    for entry, ts in raw:
        try:
            decision_id, offer_id, channel = json.loads(entry)
            contacts.append(Contact(float(ts), Channel(channel), str(offer_id), str(decision_id)))
        except ValueError:
            raise FeatureStoreError(f"{key}: malformed contact {entry[:200]!r}") from None
    return ContactHistory(tuple(contacts), since_ts)


def parse_wallet(key: str, raw: dict[bytes, bytes], now: float) -> Wallet:
    coupons = sorted((Coupon.from_json(key, v) for v in raw.values()), key=lambda c: (c.issued_ts, c.coupon_id))
    return Wallet(tuple(coupons), now)


def _usage(raw: dict[bytes, bytes]) -> BudgetUsage:
    def get(name: str) -> int:
        return int(raw.get(name.encode(), b"0"))

    return BudgetUsage(get("issued"), get("reserved_cents"), get("redeemed"), get("spent_cents"))


def budget_left(offer: Offer, usage: BudgetUsage) -> bool:
    """Snapshot check for ranking; the issue script re-checks atomically."""
    b = offer.budget
    if b.max_count is not None and usage.issued + 1 > b.max_count:
        return False
    return b.max_money is None or usage.reserved_cents + cents(offer.redemption_cost) <= cents(b.max_money)


class OfferStore:
    """All offer reads and writes against one Redis namespace.

    `idempotency_days` is how long a request id's decision is remembered for retries.
    """

    def __init__(self, client: redis.Redis, config: RedisConfig, idempotency_days: float = 7.0) -> None:
        self.client = client
        self.config = config
        self.keys = Keys(config.namespace)
        self.idempotency_ttl = int(idempotency_days * DAY)
        self._issue = client.register_script(_ISSUE)
        self._redeem = client.register_script(_REDEEM)
        self._reserve = client.register_script(_RESERVE)

    # --- reads ---------------------------------------------------------------------------------------
    def read(self, member_id: str, offers: Sequence[Offer], since: float) -> tuple[ContactHistory, list[BudgetUsage]]:
        """The member's contacts since `since` and every offer's budget usage, in one round trip."""
        key = self.keys.contacts(member_id)
        with redis_unavailable("read offers state"):
            pipe = self.client.pipeline(transaction=False)
            pipe.zrangebyscore(key, since, "+inf", withscores=True)
            for o in offers:
                pipe.hgetall(self.keys.offer_budget(o.id))
            raw, *budgets = pipe.execute()
        return parse_contacts(key, raw, since), [_usage(b) for b in budgets]

    def contacts(self, member_id: str, since_ts: float) -> ContactHistory:
        """The member's contacts (offers shown or issued) since `since_ts`, oldest first."""
        return self.read(member_id, (), since_ts)[0]

    def marketing_states(self, member_ids: Sequence[str], since: float, now: float,
                         wallets: bool = True) -> list[tuple[ContactHistory, Wallet]]:
        """Contacts since `since` and (unless `wallets` is False: empty) the wallet of many members, in one
        round trip (audiences)."""
        per = 2 if wallets else 1
        with redis_unavailable("read marketing state"):
            pipe = self.client.pipeline(transaction=False)
            for m in member_ids:
                pipe.zrangebyscore(self.keys.contacts(m), since, "+inf", withscores=True)
                if wallets:
                    pipe.hgetall(self.keys.wallet(m))
            raw = pipe.execute()
        return [(parse_contacts(self.keys.contacts(m), raw[per * i], since),
                 parse_wallet(self.keys.wallet(m), raw[per * i + 1], now) if wallets else Wallet((), now))
                for i, m in enumerate(member_ids)]

    def wallet(self, member_id: str, now: float) -> Wallet:
        key = self.keys.wallet(member_id)
        with redis_unavailable("wallet"):
            raw = self.client.hgetall(key)
        return parse_wallet(key, raw, now)

    def coupon(self, member_id: str, coupon_id: str, now: float) -> Coupon | None:
        return next((c for c in self.wallet(member_id, now).coupons if c.coupon_id == coupon_id), None)

    def usage(self, offer_id: str) -> BudgetUsage:
        with redis_unavailable("budget usage"):
            return _usage(self.client.hgetall(self.keys.offer_budget(offer_id)))

    def stored_decision(self, request_id: str) -> dict[str, Any] | None:
        with redis_unavailable("stored_decision"):
            raw = self.client.get(self.keys.offer_decision(request_id))
        return None if raw is None else json.loads(raw)

    # --- writes --------------------------------------------------------------------------------------
    def store_decision(self, request_id: str, decision: dict[str, Any]) -> dict[str, Any] | None:
        """Remember a decision that issued nothing; returns the one stored first if a retry got there before."""
        with redis_unavailable("store_decision"):
            created = self.client.set(self.keys.offer_decision(request_id), json.dumps(decision), nx=True,
                                      ex=self.idempotency_ttl)
        return None if created else self.stored_decision(request_id)

    def issue(self, offer: Offer, member_id: str, channel: str, now: float, request_id: str, decision_id: str,
              coupon_id: str, decision: dict[str, Any], fatigue: Cap | None = None) -> IssueResult:
        """Reserve budget and put `coupon_id` in the member's wallet, or report which limit stops it; all or nothing."""
        cap = offer.per_member_cap
        b = offer.budget
        coupon = Coupon(coupon_id, member_id, offer.id, decision_id, now, offer.valid_until.timestamp(),
                        offer.redemption_cost)
        with redis_unavailable("issue_coupon"):
            outcome, stored = self._issue(keys=[
                self.keys.offer_decision(request_id), self.keys.offer_budget(offer.id),
                self.keys.contacts(member_id), self.keys.wallet(member_id),
            ], args=[
                json.dumps(decision), -1 if b.max_count is None else b.max_count,
                -1 if b.max_money is None else cents(b.max_money), cents(offer.redemption_cost), now,
                self.idempotency_ttl, -1 if cap is None else cap.count, now - (cap.period_days * DAY if cap else 0),
                -1 if fatigue is None else fatigue.count, now - (fatigue.period_days * DAY if fatigue else 0),
                offer.id, channel, _contact_entry(decision_id, offer.id, channel), self.config.contact_ttl_s,
                coupon_id, coupon.to_json(), self.config.wallet_ttl_s,
            ])
        outcome = outcome.decode()
        return IssueResult(outcome, json.loads(stored) if outcome == "replayed" else None)

    def reserve(self, offer: Offer) -> bool:
        """Charge one showing of a non-coupon offer (an event invitation) to its budget, if any is left."""
        b = offer.budget
        with redis_unavailable("reserve budget"):
            ok = self._reserve(keys=[self.keys.offer_budget(offer.id)], args=[
                -1 if b.max_count is None else b.max_count, -1 if b.max_money is None else cents(b.max_money),
                cents(offer.redemption_cost)])
        return bool(ok)

    def _queue_contacts(self, pipe: Any, member_id: str, channel: Channel | str, decision_id: str,
                        offer_ids: Sequence[str], now: float) -> None:
        key = self.keys.contacts(member_id)
        pipe.zadd(key, {_contact_entry(decision_id, o, channel): now for o in offer_ids})
        pipe.zremrangebyscore(key, "-inf", now - self.config.contact_ttl_s)
        pipe.expire(key, self.config.contact_ttl_s)

    def record_contacts(self, member_id: str, channel: Channel, decision_id: str, offer_ids: Sequence[str],
                        now: float) -> None:
        """Log that `offer_ids` were shown to the member on `channel`; trims entries past retention."""
        if not offer_ids:
            return
        with redis_unavailable("record_contacts"):
            pipe = self.client.pipeline(transaction=False)
            self._queue_contacts(pipe, member_id, channel, decision_id, offer_ids, now)
            pipe.execute()

    def confirm_send(self, send_id: str, offer_id: str, channel: Channel, member_ids: Sequence[str],
                     sent_at: float | None, now: float, batch: int = 2_000) -> tuple[bool, float]:
        """Record a campaign send as one contact per member (decision id = send id).

        Returns (first time, the send's time). Contacts are written before the send is marked done, and
        writing them again changes nothing (same sorted-set member, same score), so a retry after any
        failure completes the send exactly once; a retry without `sent_at` reuses the first one's time. The
        same send id with another offer, channel, member list or time is refused: it would mix two sends.
        """
        digest = hashlib.blake2b("\x1f".join([offer_id, channel.value, *sorted(member_ids)]).encode(),
                                 digest_size=16).hexdigest()
        key = self.keys.offer_send(send_id)
        with redis_unavailable("confirm_send"):
            raw = self.client.get(key)
            earlier = None if raw is None else json.loads(raw)
            if earlier is not None and (earlier["digest"] != digest or
                                        sent_at is not None and abs(sent_at - earlier["sent_at"]) > 1e-3):
                raise AlreadyExists(f"send_id: {send_id!r} was confirmed with another offer, channel, member list "
                                    "or time; use a new send id")
            when = earlier["sent_at"] if earlier is not None else (now if sent_at is None else sent_at)
            for start in range(0, len(member_ids), batch):
                pipe = self.client.pipeline(transaction=False)
                for m in member_ids[start:start + batch]:
                    self._queue_contacts(pipe, m, channel, send_id, [offer_id], when)
                pipe.execute()
            first = self.client.set(key, json.dumps({"digest": digest, "sent_at": when}), nx=True,
                                    ex=self.config.contact_ttl_s)
        return bool(first), when

    def redeem(self, coupon: Coupon, offer: Offer, order_value: float, now: float, redemption_id: str) -> bool:
        """Record the redemption once and book its cost; False (and no change) when it was redeemed before."""
        if coupon.redeemed_ts is None:
            if coupon.status_at(now) is CouponStatus.EXPIRED:
                raise FailedPrecondition(f"coupon {coupon.coupon_id} expired")
            if order_value < offer.min_spend:
                raise FailedPrecondition(f"order_value: {order_value:g} is below the offer's minimum spend "
                                         f"{offer.min_spend:g}")
        with redis_unavailable("redeem_coupon"):
            code, _ = self._redeem(keys=[
                self.keys.wallet(coupon.member_id), self.keys.offer_budget(offer.id),
                self.keys.offer_stats(coupon.member_id),
            ], args=[coupon.coupon_id, now, redemption_id, self.config.wallet_ttl_s,
                     cents(offer.discount(order_value))])
        if int(code) == 0:
            raise NotFound(f"coupon_id: member {coupon.member_id!r} holds no coupon {coupon.coupon_id!r}")
        return int(code) == 1
