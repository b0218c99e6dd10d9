"""Offer state on Redis: atomic budget reservation, idempotent decisions, contacts, coupons and redemptions.

Every state change that must hold under concurrency is one Lua script, so Redis runs it atomically:
issuing a coupon checks the request id, the member's cap, the channel's fatigue cap and the offer's count
and money budgets, then reserves and records everything, or changes nothing. Money is kept in integer
cents so repeated reservations never drift. The scripts touch several keys, so on Redis Cluster all
offer keys must share a slot: use a single Redis (or one shard) for offers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from domain.errors import FailedPrecondition, NotFound, Unavailable
from feature_store.keys import Keys
from offers.catalogue import Offer

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
    local offer, ch = string.match(entries[i], '^([^|]*)|([^|]*)|')
    local ts = tonumber(entries[i + 1])
    if offer == ARGV[11] and ts >= tonumber(ARGV[8]) then mine = mine + 1 end
    if ch == ARGV[12] and ts >= tonumber(ARGV[10]) then channel = channel + 1 end
  end
  if cap >= 0 and mine >= cap then return {'cap_reached', tostring(mine)} end
  if fatigue >= 0 and channel >= fatigue then return {'fatigue_cap', tostring(channel)} end
end
redis.call('HINCRBY', KEYS[2], 'issued', 1)
redis.call('HINCRBY', KEYS[2], 'reserved_cents', cost)
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[11] .. '|' .. ARGV[12] .. '|' .. ARGV[13])
redis.call('EXPIRE', KEYS[3], ARGV[14])
redis.call('HSET', KEYS[4], 'member_id', ARGV[15], 'offer_id', ARGV[11], 'decision_id', ARGV[13],
           'issued_ts', ARGV[5], 'valid_until', ARGV[16], 'status', 'issued')
redis.call('EXPIRE', KEYS[4], ARGV[17])
redis.call('HSET', KEYS[5], ARGV[18], 'issued')
redis.call('EXPIRE', KEYS[5], ARGV[17])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[6])
return {'issued', ''}
"""
"""KEYS: idempotency, budget, contacts, coupon, wallet. ARGV: 1 decision json, 2 max count, 3 max cents,
4 cost cents, 5 now, 6 idempotency ttl, 7 cap count, 8 cap since, 9 fatigue count, 10 fatigue since,
11 offer id, 12 channel, 13 decision id, 14 contacts ttl, 15 member id, 16 valid until, 17 coupon ttl,
18 coupon id. Negative limits mean "no limit"."""

_REDEEM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', ''} end
local status = redis.call('HGET', KEYS[1], 'status')
local offer = redis.call('HGET', KEYS[1], 'offer_id')
if status == 'redeemed' then return {'already', offer} end
redis.call('HSET', KEYS[1], 'status', 'redeemed', 'redeemed_ts', ARGV[1], 'order_value', ARGV[2],
           'discount_cents', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'redeemed', 1)
redis.call('HINCRBY', KEYS[2], 'spent_cents', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[4], 'redeemed')
redis.call('HINCRBY', KEYS[4], 'redemptions', 1)
redis.call('HSET', KEYS[4], 'last_redeem_ts', ARGV[1])
return {'redeemed', offer}
"""
"""KEYS: coupon, budget, wallet, member offer stats. ARGV: 1 now, 2 order value, 3 discount cents, 4 coupon id."""


def cents(money: float) -> int:
    return int(round(money * 100))


@dataclass(frozen=True)
class IssueResult:
    outcome: str
    """`issued`, `replayed`, `budget_exhausted`, `cap_reached` or `fatigue_cap`."""
    stored: dict[str, Any] | None = None
    """The decision stored earlier under the request id (for `replayed`)."""


@dataclass(frozen=True)
class Contact:
    offer_id: str
    channel: str
    decision_id: str
    ts: float


@dataclass(frozen=True)
class BudgetUsage:
    issued: int
    reserved_cents: int
    redeemed: int
    spent_cents: int


@dataclass(frozen=True)
class Redemption:
    newly_redeemed: bool
    offer_id: str


class OfferStore:
    """All offer reads and writes against one Redis namespace.

    `contact_days` bounds how far back contacts are kept (the longest cap or fatigue period);
    `idempotency_days` how long a request id's decision is remembered for retries.
    """

    def __init__(self, client: redis.Redis, keys: Keys, contact_days: float = 400.0,
                 idempotency_days: float = 7.0) -> None:
        self.client = client
        self.keys = keys
        self.contact_ttl = int(contact_days * DAY)
        self.idempotency_ttl = int(idempotency_days * DAY)
        self._issue = client.register_script(_ISSUE)
        self._redeem = client.register_script(_REDEEM)

    def _run(self, script: Any, script_keys: Sequence[str], args: Sequence[object]) -> list[str]:
        try:
            result = script(keys=list(script_keys), args=list(args))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise Unavailable(f"offer store: redis unavailable: {exc}") from exc
        return [v.decode() if isinstance(v, bytes) else str(v) for v in result]

    def stored_decision(self, request_id: str) -> dict[str, Any] | None:
        raw = self._call(self.client.get, self.keys.offer_decision(request_id))
        return None if raw is None else json.loads(raw)

    def store_decision(self, request_id: str, decision: dict[str, Any]) -> dict[str, Any] | None:
        """Remember a decision that issued nothing; returns the one stored first if a retry got there before."""
        key = self.keys.offer_decision(request_id)
        if self._call(self.client.set, key, json.dumps(decision), nx=True, ex=self.idempotency_ttl):
            return None
        return self.stored_decision(request_id)

    def issue(self, offer: Offer, member_id: str, channel: str, now: float, request_id: str, decision_id: str,
              coupon_id: str, decision: dict[str, Any], fatigue_count: int | None = None,
              fatigue_days: float = 7.0) -> IssueResult:
        """Reserve budget and issue `coupon_id` to the member, or report which limit stops it; all or nothing."""
        cap = offer.per_member_cap
        b = offer.budget
        valid_until = offer.valid_until.timestamp()
        outcome, stored = self._run(self._issue, [
            self.keys.offer_decision(request_id), self.keys.offer_budget(offer.id),
            self.keys.contacts(member_id), self.keys.coupon(coupon_id),
            self.keys.wallet(member_id),
        ], [
            json.dumps(decision), -1 if b.max_count is None else b.max_count,
            -1 if b.max_money is None else cents(b.max_money), cents(offer.redemption_cost), now,
            self.idempotency_ttl, -1 if cap is None else cap.count, now - (cap.period_days * DAY if cap else 0),
            -1 if fatigue_count is None else fatigue_count, now - fatigue_days * DAY, offer.id, channel,
            decision_id, self.contact_ttl, member_id, valid_until, max(1, int(valid_until - now) + int(30 * DAY)),
            coupon_id,
        ])
        return IssueResult(outcome, json.loads(stored) if outcome == "replayed" else None)

    def record_contacts(self, member_id: str, contacts: Iterable[Contact]) -> None:
        """Offers shown by NextBestOffer count towards caps and fatigue like issued coupons."""
        entries = {f"{c.offer_id}|{c.channel}|{c.decision_id}": c.ts for c in contacts}
        if not entries:
            return
        key = self.keys.contacts(member_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(key, entries)
        pipe.expire(key, self.contact_ttl)
        self._call(pipe.execute)

    def read(self, member_id: str, offers: Sequence[Offer], since: float) -> tuple[list[Contact], list[BudgetUsage]]:
        """The member's contacts since `since` and every offer's budget usage, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrangebyscore(self.keys.contacts(member_id), since, "+inf", withscores=True)
        for o in offers:
            pipe.hgetall(self.keys.offer_budget(o.id))
        raw, *budgets = self._call(pipe.execute)
        contacts = []
        for entry, ts in raw:
            offer_id, channel, decision_id = entry.decode().split("|", 2)
            contacts.append(Contact(offer_id, channel, decision_id, ts))
        return contacts, [_usage(b) for b in budgets]

    def usage(self, offer_id: str) -> BudgetUsage:
        return _usage(self._call(self.client.hgetall, self.keys.offer_budget(offer_id)))

    def coupon(self, coupon_id: str) -> dict[str, str] | None:
        raw = self._call(self.client.hgetall, self.keys.coupon(coupon_id))
        return {k.decode(): v.decode() for k, v in raw.items()} or None

    def wallet(self, member_id: str) -> dict[str, str]:
        raw = self._call(self.client.hgetall, self.keys.wallet(member_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def redeem(self, coupon_id: str, member_id: str, offer: Offer, order_value: float, now: float) -> Redemption:
        """Record the redemption once; a retry answers `newly_redeemed=False` and changes nothing."""
        coupon = self.coupon(coupon_id)
        if coupon is None or coupon["member_id"] != member_id:
            raise NotFound(f"coupon_id: no coupon {coupon_id!r} for member {member_id!r}")
        if coupon["status"] != "redeemed":
            if now > float(coupon["valid_until"]):
                raise FailedPrecondition(f"coupon {coupon_id} expired")
            if order_value < offer.min_spend:
                raise FailedPrecondition(f"order_value: {order_value:g} is below the offer's minimum spend "
                                         f"{offer.min_spend:g}")
        outcome, offer_id = self._run(self._redeem, [
            self.keys.coupon(coupon_id), self.keys.offer_budget(offer.id),
            self.keys.wallet(member_id), self.keys.offer_stats(member_id),
        ], [now, order_value, cents(offer.discount(order_value)), coupon_id])
        if outcome == "missing":
            raise NotFound(f"coupon_id: no coupon {coupon_id!r} for member {member_id!r}")
        return Redemption(outcome == "redeemed", offer_id)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise Unavailable(f"offer store: redis unavailable: {exc}") from exc


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
