"""Offer state on Redis, and its only writer: coupons (wallets), the contact ledger, budgets, decisions.

On one Redis every state change that must hold under concurrency is one Lua script, so Redis runs it
atomically: issuing a coupon checks the request id, the member's cap, the channel's fatigue cap and the
offer's count and money budgets, then reserves and records everything, or changes nothing. Money is kept
in integer cents so repeated reservations never drift.

On Redis Cluster a member's keys (tagged by the member) and an offer's budget (tagged by the offer) live in
different slots, so an issue is a reservation protocol in which every step is one single-slot script and
idempotent under the request id:

1. claim the request id (`offer_decision:{request}`, bound to the request's fingerprint);
2. reserve: the offer's budget is charged and a pending hold (`offer_hold:{offer}:request`, with a fresh
   token) is indexed by its release time in `offer_holds:{offer}`; a retry finds the same hold and token;
3. issue in the member's slot: the per-request record `offer_request:{member}:request` takes the decision
   and the token that issued it, with the cap and fatigue checks, the ledger and the wallet; a token
   marked void there can never issue;
4. confirm the hold (budget kept) or release it (budget refunded), and store the decision under the
   request id for the next retry's read.

A hold whose client died is reaped once its release time passes (`reap`, run by the next decision that
reads the offer): the token is voided in the member's record unless it already issued there, which fences
off the slow client, and only then is the budget refunded (or the hold confirmed, if it issued). So no
budget is ever spent twice and no request issues twice, whatever step a client dies at, and no clock
agreement is needed for that (clocks only decide when a hold is considered abandoned).

Keys come from `feature_store.keys` (durable key space: offer state survives re-materialisation);
`feature_store/FORMAT.md` documents the layout.

Wallet: hash `wallet:{member}`, field = coupon id, value = the coupon as compact JSON. A coupon is
`issued` until redeemed or past `expires_ts`, when it reads as `expired` (derived, never rewritten).
Ledger: sorted set `contacts:{member}`, score = contact time, member = JSON `[decision_id, offer_id,
channel]`; entries older than `contact_ttl_s` are trimmed on every write.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import json.scanner
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from omnirec.domain.clock import DAY
from omnirec.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import FeatureStoreError, redis_unavailable
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.pipelined import PipelinedConnection
from omnirec.feature_store.reader import Batch
from omnirec.offers.catalogue import Cap, Offer

_LIMITS = """
local function over_limits(contacts, cap, cap_since, fatigue, fatigue_since, offer_id, channel)
  cap, cap_since = tonumber(cap), tonumber(cap_since)
  fatigue, fatigue_since = tonumber(fatigue), tonumber(fatigue_since)
  if cap < 0 and fatigue < 0 then return nil end
  local entries = redis.call('ZRANGEBYSCORE', contacts, math.min(cap_since, fatigue_since), '+inf', 'WITHSCORES')
  local mine, on_channel = 0, 0
  for i = 1, #entries, 2 do
    local contact = cjson.decode(entries[i])
    local ts = tonumber(entries[i + 1])
    if contact[2] == offer_id and ts >= cap_since then mine = mine + 1 end
    if contact[3] == channel and ts >= fatigue_since then on_channel = on_channel + 1 end
  end
  if cap >= 0 and mine >= cap then return 'cap_reached', mine end
  if fatigue >= 0 and on_channel >= fatigue then return 'fatigue_cap', on_channel end
  return nil
end
"""
"""The per-member cap and the channel's fatigue cap, shared by the single-Redis issue script and the cluster's
member step: `over_limits(contacts key, cap count, cap since, fatigue count, fatigue since, offer id, channel)`
returns the rule that blocks (`cap_reached`, `fatigue_cap`) and the contacts it counted, or nil. Negative
counts mean "no limit"."""

_ISSUE = _LIMITS + """
local stored = redis.call('GET', KEYS[1])
if stored then return {'replayed', stored} end
local max_count, max_cents, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count = tonumber(redis.call('HGET', KEYS[2], 'issued') or '0')
local cents = tonumber(redis.call('HGET', KEYS[2], 'reserved_cents') or '0')
if (max_count >= 0 and count + 1 > max_count) or (max_cents >= 0 and cents + cost > max_cents) then
  return {'budget_exhausted', ''}
end
local blocked, seen = over_limits(KEYS[3], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12])
if blocked then return {blocked, tostring(seen)} end
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

_SHOW = """
local shown, ttl, now = {}, tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 2, #KEYS do
  local at = 3 + (i - 2) * 4
  local max_count, max_cents, cost = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local ok = 1
  if max_count >= 0 or max_cents >= 0 then
    local count = tonumber(redis.call('HGET', KEYS[i], 'issued') or '0')
    local cents = tonumber(redis.call('HGET', KEYS[i], 'reserved_cents') or '0')
    if (max_count >= 0 and count + 1 > max_count) or (max_cents >= 0 and cents + cost > max_cents) then
      ok = 0
    else
      redis.call('HINCRBY', KEYS[i], 'issued', 1)
      redis.call('HINCRBY', KEYS[i], 'reserved_cents', cost)
    end
  end
  if ok == 1 then redis.call('ZADD', KEYS[1], now, ARGV[at]) end
  shown[i - 1] = ok
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('EXPIRE', KEYS[1], ttl)
return shown
"""
"""KEYS: contacts, then one budget per offer shown. ARGV: 1 contact ttl, 2 now, then per offer: contact entry,
max count, max cents, cost cents (negative limits: no limit; coupons pass -1, their budget is charged when
issued). Records the offers a member was shown and charges invitations' budgets, all or nothing per offer."""

_MARK_REDEEMED = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {0, ''} end
local coupon = cjson.decode(raw)
if coupon['redeemed_ts'] ~= cjson.null then return {2, raw} end
coupon['redeemed_ts'] = tonumber(ARGV[2])
coupon['redemption_id'] = ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(coupon))
redis.call('EXPIRE', KEYS[1], ARGV[4])
"""
"""The wallet's check-and-set that both redemption scripts start with. KEYS[1]: wallet. ARGV: 1 coupon id,
2 now, 3 redemption id, 4 wallet ttl. Returns early ({0, ''} unknown, {2, coupon} already redeemed)."""

_REDEEM = _MARK_REDEEMED + """redis.call('HINCRBY', KEYS[2], 'redeemed', 1)
redis.call('HINCRBY', KEYS[2], 'spent_cents', ARGV[5])
redis.call('HINCRBY', KEYS[3], 'redemptions', 1)
redis.call('HSET', KEYS[3], 'last_redeem_ts', ARGV[2])
return {1, raw}
"""
"""KEYS: wallet, budget, member offer stats. ARGV: 1 coupon id, 2 now, 3 redemption id, 4 wallet ttl,
5 discount cents. Check-and-set in one step, so concurrent or retried redemptions record exactly one."""



_RESERVE = """
local hold = redis.call('HMGET', KEYS[2], 'request', 'state', 'token')
if hold[2] then
  if hold[1] ~= ARGV[1] then return {'other_request', ''} end
  return {hold[2], hold[3]}
end
local max_count, max_cents, cost = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local count = tonumber(redis.call('HGET', KEYS[1], 'issued') or '0')
local cents = tonumber(redis.call('HGET', KEYS[1], 'reserved_cents') or '0')
if (max_count >= 0 and count + 1 > max_count) or (max_cents >= 0 and cents + cost > max_cents) then
  return {'budget_exhausted', ''}
end
redis.call('HINCRBY', KEYS[1], 'issued', 1)
redis.call('HINCRBY', KEYS[1], 'reserved_cents', cost)
redis.call('HSET', KEYS[2], 'request', ARGV[1], 'member', ARGV[2], 'cents', cost, 'state', 'pending',
           'token', ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[9])
return {'pending', ARGV[6]}
"""
"""Cluster step 2, in the offer's slot. KEYS: budget, hold, holds. ARGV: 1 request fingerprint, 2 member id,
3 max count, 4 max cents, 5 cost cents, 6 new token, 7 release time, 8 hold ttl, 9 request id. Returns the
hold's state (`pending`, `confirmed`) and token, `budget_exhausted`, or `other_request` (the request id was
reserved for another request)."""

_MEMBER_ISSUE = _LIMITS + """
local rec = redis.call('HMGET', KEYS[1], 'decision', 'token')
if rec[1] then
  if rec[2] ~= ARGV[2] then redis.call('HSET', KEYS[1], 'void:' .. ARGV[2], 1) end
  return {'replayed', rec[1], rec[2] == ARGV[2] and 1 or 0}
end
if redis.call('HEXISTS', KEYS[1], 'void:' .. ARGV[2]) == 1 then return {'released', '', 0} end
local blocked, seen = over_limits(KEYS[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
if blocked then
  redis.call('HSET', KEYS[1], 'void:' .. ARGV[2], 1)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return {blocked, tostring(seen), 0}
end
redis.call('ZADD', KEYS[2], ARGV[15], ARGV[10])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[15]) - tonumber(ARGV[11]))
redis.call('EXPIRE', KEYS[2], ARGV[11])
redis.call('HSETNX', KEYS[3], ARGV[12], ARGV[13])
redis.call('EXPIRE', KEYS[3], ARGV[14])
redis.call('HSET', KEYS[1], 'decision', ARGV[1], 'token', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {'issued', '', 1}
"""
"""Cluster step 3, in the member's slot. KEYS: request record, contacts, wallet. ARGV: 1 decision json,
2 hold token, 3 record ttl, 4 cap count, 5 cap since, 6 fatigue count, 7 fatigue since, 8 offer id,
9 channel, 10 contact entry, 11 contact ttl, 12 coupon id, 13 coupon json, 14 wallet ttl, 15 now. Returns
(outcome, detail, whether this token issued): `issued`; `replayed` with the record's decision (a token
that did not issue it is voided); `released` (the reaper voided the token); `cap_reached`/`fatigue_cap`
(the token is voided, so its hold can be released)."""

_VOID = """
local rec = redis.call('HMGET', KEYS[1], 'decision', 'token')
if rec[1] and rec[2] == ARGV[1] then return 1 end
redis.call('HSET', KEYS[1], 'void:' .. ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
"""
"""Reaper, in the member's slot. KEYS: request record. ARGV: 1 token, 2 record ttl. 1 when the token issued
the request's coupon (confirm its hold), else 0 and the token can never issue (release its hold)."""

_CONFIRM = """
local hold = redis.call('HMGET', KEYS[1], 'token', 'state')
if hold[1] ~= ARGV[1] then return 0 end
if hold[2] == 'pending' then redis.call('HSET', KEYS[1], 'state', 'confirmed') end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""
"""Cluster step 4, in the offer's slot. KEYS: hold, holds. ARGV: 1 token, 2 request id. The budget stays charged."""

_RELEASE = """
local hold = redis.call('HMGET', KEYS[2], 'token', 'state', 'cents')
if hold[1] ~= ARGV[1] or hold[2] ~= 'pending' then return 0 end
redis.call('HINCRBY', KEYS[1], 'issued', -1)
redis.call('HINCRBY', KEYS[1], 'reserved_cents', -tonumber(hold[3]))
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""
"""Cluster step 4 when nothing was issued under the token, in the offer's slot. KEYS: budget, hold, holds.
ARGV: 1 token, 2 request id. Refunds a pending hold once; only ever run after the token was voided."""

_CHARGE = """
local max_count, max_cents, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local count = tonumber(redis.call('HGET', KEYS[1], 'issued') or '0')
local cents = tonumber(redis.call('HGET', KEYS[1], 'reserved_cents') or '0')
if (max_count >= 0 and count + 1 > max_count) or (max_cents >= 0 and cents + cost > max_cents) then return 0 end
redis.call('HINCRBY', KEYS[1], 'issued', 1)
redis.call('HINCRBY', KEYS[1], 'reserved_cents', cost)
return 1
"""
"""Cluster: charge one invitation to its budget. KEYS: budget. ARGV: max count, max cents, cost cents."""

_REDEEM_MEMBER = _MARK_REDEEMED + """redis.call('HINCRBY', KEYS[2], 'redemptions', 1)
redis.call('HSET', KEYS[2], 'last_redeem_ts', ARGV[2])
return {1, raw}
"""
"""Cluster redemption, in the member's slot. KEYS: wallet, member offer stats. ARGV: as `_REDEEM` without
the discount."""

_BOOK = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('HINCRBY', KEYS[1], 'redeemed', 1)
  redis.call('HINCRBY', KEYS[1], 'spent_cents', ARGV[1])
  return 1
end
return 0
"""
"""Cluster redemption, in the offer's slot. KEYS: budget, the coupon's booking marker. ARGV: discount cents,
marker ttl. Books a redemption once, so a retry after the member step books nothing twice."""

_SNAPSHOT = """
local out = {redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES')}
local first = 2
if ARGV[2] == '1' then
  out[2] = redis.call('GET', KEYS[2])
  first = 3
end
for i = first, #KEYS do
  out[#out + 1] = redis.call('HMGET', KEYS[i], 'issued', 'reserved_cents', 'redeemed', 'spent_cents')
end
return out
"""
"""Single Redis, read only. KEYS: contacts, then (ARGV 2 = 1) the decision under the request id, then each
offer's budget. ARGV: 1 contacts since, 2 whether a decision key is given. Returns the contacts with their
scores, the stored decision (nil when none or not asked), then per budget its four counters (nil when
unset): a decision's offer state in one command instead of one per offer, which was most of the client's
cost of the round trip (redis-py packs and parses each command in Python)."""


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
        return json.dumps({f: getattr(self, f) for f in _COUPON_FIELDS}, separators=(",", ":"))

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> Coupon:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise FeatureStoreError(f"{key}: malformed coupon {raw[:200]!r}: {exc}") from None


_COUPON_FIELDS = sorted(f.name for f in fields(Coupon))
"""A coupon's JSON keys, sorted (`dataclasses.asdict` cost an issue more than the JSON itself)."""


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
    stored: StoredDecision | None = None
    """The decision stored earlier under the request id (for `replayed`)."""


def _contact_entry(decision_id: str, offer_id: str, channel: Channel | str) -> str:
    return json.dumps([decision_id, offer_id, Channel(channel).value], separators=(",", ":"))


def parse_contacts(key: str, raw: list[tuple[bytes, float]], since_ts: float) -> ContactHistory:
    if not raw:
        return ContactHistory((), since_ts)
    try:  # every entry in one JSON document: one parse per member instead of one per contact
        entries = json.loads(b"[" + b",".join(entry for entry, _ in raw) + b"]")
        return ContactHistory(tuple(Contact(float(ts), Channel(channel), str(offer_id), str(decision_id))
                                    for (decision_id, offer_id, channel), (_, ts) in zip(entries, raw, strict=True)),
                              since_ts)
    except (ValueError, TypeError):
        pass
    for entry, _ in raw:  # name the malformed one
        try:
            decision_id, offer_id, channel = json.loads(entry)
            Channel(channel)
        except (ValueError, TypeError):
            raise FeatureStoreError(f"{key}: malformed contact {entry[:200]!r}") from None
    raise FeatureStoreError(f"{key}: malformed contacts")


@dataclass(frozen=True)
class ContactColumns:
    """The contact histories of many members (campaign audiences), one row per contact: `member` is the
    member's position among them. `count` gives, for every member at once, what `ContactHistory.count` gives."""

    members: int
    since_ts: float
    member: np.ndarray
    ts: np.ndarray
    channel: np.ndarray
    offer_id: np.ndarray

    def count(self, since_ts: float | None = None, channel: Channel | str | None = None,
              offer_id: str | None = None) -> np.ndarray:
        since = self.since_ts if since_ts is None else since_ts
        if since < self.since_ts:
            raise ValueError(f"history starts at {self.since_ts}; cannot count contacts since {since}")
        keep = self.ts >= since
        if channel is not None:
            keep &= self.channel == str(channel)
        if offer_id is not None:
            keep &= self.offer_id == offer_id
        return np.bincount(self.member[keep], minlength=self.members)

    @classmethod
    def of(cls, histories: Sequence[ContactHistory], since_ts: float) -> ContactColumns:
        contacts = [c for h in histories for c in h.contacts]
        return cls(len(histories), since_ts,
                   np.repeat(np.arange(len(histories)), [len(h.contacts) for h in histories]),
                   np.array([c.ts for c in contacts], np.float64),
                   np.array([str(c.channel) for c in contacts], object),
                   np.array([c.offer_id for c in contacts], object))


_CHANNELS = frozenset(c.value for c in Channel)
_ENTRY = (r'^\["(?P<decision>[^"\\\x00-\x1f]*)","(?P<offer>[^"\\\x00-\x1f]*)","(?P<channel>'
          + "|".join(sorted(_CHANNELS)) + r')"\]$')
"""A contact entry as `_contact_entry` writes it, with no escape in its strings: its JSON value is the three
strings as they stand."""
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[attr-defined]
"""The C scanner under `json.loads`, for entries spelled otherwise."""


def parse_contact_columns(member_ids: Sequence[str], key: Callable[[str], str],
                          raws: Sequence[Sequence[tuple[bytes, float]]], since_ts: float) -> ContactColumns:
    """`parse_contacts` of many members at once (`raws[i]`: the (entry, score) pairs under `key(member_ids[i])`,
    as `parse_contacts` takes them). Entries as `_contact_entry` writes them are matched by one Arrow regex
    kernel over the chunk, other JSON lists of three values with a known channel are read by the JSON scanner
    one by one; a chunk with anything else goes through `parse_contacts` member by member, which accepts or
    raises exactly as the offer decisions' reads do."""
    try:
        decoded = _entries([e for r in raws for e, _ in r])
    except (ValueError, TypeError, StopIteration, pa.ArrowInvalid):
        decoded = None
    if decoded is None:
        return ContactColumns.of([parse_contacts(key(m), list(r), since_ts)
                                  for m, r in zip(member_ids, raws, strict=True)], since_ts)
    sizes = np.fromiter(map(len, raws), np.int64, len(raws))
    return ContactColumns(len(raws), since_ts, np.repeat(np.arange(len(raws)), sizes),
                          np.array([ts for r in raws for _, ts in r], np.float64), decoded[1], decoded[0])


def _entries(entries: list[bytes]) -> tuple[np.ndarray, np.ndarray] | None:
    """(offer ids, channels) of contact entries as `parse_contacts` reads them, or None when one of them is
    left to it (not a JSON list of three values with a known channel)."""
    if not entries:
        return np.zeros(0, object), np.zeros(0, object)
    parts = pc.extract_regex(pa.array(entries, pa.binary()).cast(pa.string()), _ENTRY)  # UTF-8 checked
    offers = parts.field("offer").to_numpy(zero_copy_only=False).astype(object)
    channels = parts.field("channel").to_numpy(zero_copy_only=False).astype(object)
    for i in np.flatnonzero(~parts.is_valid().to_numpy(zero_copy_only=False)).tolist():
        text = entries[i].decode()
        value, end = _SCAN(text, 0)
        if end != len(text) or type(value) is not list or len(value) != 3 or value[2] not in _CHANNELS:
            return None
        offers[i], channels[i] = str(value[1]), value[2]
    return offers, channels


def parse_wallet(key: str, raw: dict[bytes, bytes], now: float) -> Wallet:
    coupons = sorted((Coupon.from_json(key, v) for v in raw.values()), key=lambda c: (c.issued_ts, c.coupon_id))
    return Wallet(tuple(coupons), now)


def _usage(raw: dict[bytes, bytes]) -> BudgetUsage:
    def get(name: str) -> int:
        return int(raw.get(name.encode(), b"0"))

    return BudgetUsage(get("issued"), get("reserved_cents"), get("redeemed"), get("spent_cents"))


def _usage_of(values: Sequence[bytes | None]) -> BudgetUsage:
    """The four counters in `_SNAPSHOT`'s order (None: never charged)."""
    issued, reserved, redeemed, spent = values
    return BudgetUsage(int(issued or 0), int(reserved or 0), int(redeemed or 0), int(spent or 0))


def budget_left(offer: Offer, usage: BudgetUsage) -> bool:
    """Snapshot check for ranking; the issue script re-checks atomically."""
    b = offer.budget
    if b.max_count is not None and usage.issued + 1 > b.max_count:
        return False
    return b.max_money is None or usage.reserved_cents + cents(offer.redemption_cost) <= cents(b.max_money)


@dataclass(frozen=True)
class StoredDecision:
    """A DecideCoupon decision kept under its request id, with the request it answered."""

    request: str | None
    """Fingerprint of (member, channel, store, basket) of the request that made it; None for records
    written before requests were fingerprinted."""
    decision: dict[str, Any]
    """Empty while the request id is only claimed (Redis Cluster: a decision is under way)."""

    @property
    def pending(self) -> bool:
        return not self.decision

    @classmethod
    def from_json(cls, raw: bytes | str) -> StoredDecision:
        data = json.loads(raw)
        return cls(data.pop("request", None), data)

    @staticmethod
    def to_json(request: str, decision: Mapping[str, Any]) -> str:
        return json.dumps({"request": request, **decision}, separators=(",", ":"))


@dataclass(frozen=True)
class OfferSnapshot:
    """The offer state one decision reads: the member's recent contacts, budgets, an earlier decision."""

    contacts: ContactHistory
    usage: Mapping[str, BudgetUsage]
    stored: StoredDecision | None = None
    expired_holds: frozenset[str] = frozenset()
    """Offers with reservations past their release time (Redis Cluster): `OfferStore.reap` settles them."""


class SnapshotRead:
    """The reads of an `OfferSnapshot`, added to a feature-store request's round trip (`read_request(extra=)`).

    On one Redis they are one read-only script (`_SNAPSHOT`); on a Redis Cluster (`holds_due` set), where a
    member's and the offers' keys live in different slots, one command per key."""

    def __init__(self, keys: Keys, member_id: str, offers: Sequence[Offer], since: float,
                 request_id: str | None, holds_due: float | None = None) -> None:
        self.keys, self.member_id, self.offers, self.since, self.request_id = keys, member_id, offers, since, request_id
        self.holds_due = holds_due
        self._result: OfferSnapshot | None = None

    def queue(self, batch: Batch, _generation_keys: Keys | None = None) -> None:
        """Durable keys: the same whatever generation the feature store reads."""
        if self.holds_due is not None:
            self._queue_commands(batch)
            return
        contacts = self.keys.contacts(self.member_id)
        decision = [] if self.request_id is None else [self.keys.offer_decision(self.request_id)]
        keys = [contacts, *decision, *(self.keys.offer_budget(o.id) for o in self.offers)]
        batch.pipe.eval(_SNAPSHOT, len(keys), *keys, self.since, int(bool(decision)))

        def parse(r: list[Any]) -> None:
            raw, stored = r[0][0], r[0][1] if decision else None
            budgets = r[0][1 + len(decision):]
            self._result = OfferSnapshot(
                parse_contacts(contacts, list(zip(raw[0::2], map(float, raw[1::2]), strict=True)), self.since),
                {o.id: _usage_of(b) for o, b in zip(self.offers, budgets, strict=True)},
                None if stored is None else StoredDecision.from_json(stored))

        batch.add(1, parse)

    def _queue_commands(self, batch: Batch) -> None:
        contacts = self.keys.contacts(self.member_id)
        batch.pipe.zrangebyscore(contacts, self.since, "+inf", withscores=True)
        for o in self.offers:
            batch.pipe.hgetall(self.keys.offer_budget(o.id))
        if self.request_id is not None:
            batch.pipe.get(self.keys.offer_decision(self.request_id))
        due = list(self.offers)
        for o in due:
            batch.pipe.zcount(self.keys.offer_holds(o.id), "-inf", self.holds_due)

        def parse(r: list[Any]) -> None:
            n = len(self.offers)
            budgets = r[1:1 + n]
            stored = r[1 + n] if self.request_id is not None else None
            expired = r[1 + n + (self.request_id is not None):]
            self._result = OfferSnapshot(parse_contacts(contacts, r[0], self.since),
                                         {o.id: _usage(b) for o, b in zip(self.offers, budgets, strict=True)},
                                         None if stored is None else StoredDecision.from_json(stored),
                                         frozenset(o.id for o, c in zip(due, expired, strict=True) if c))

        batch.add(1 + len(self.offers) + (self.request_id is not None) + len(due), parse)

    @property
    def result(self) -> OfferSnapshot:
        if self._result is None:
            raise RuntimeError("the snapshot's round trip has not run")
        return self._result


def _limits(offer: Offer) -> list[int]:
    b = offer.budget
    return [-1 if b.max_count is None else b.max_count, -1 if b.max_money is None else cents(b.max_money),
            cents(offer.redemption_cost)]


class OfferStore:
    """The only reader and writer of offer state, on the worker's Redis client pair.

    Request-time methods (decisions, redemptions) are coroutines on the asyncio `client`: reads for a
    decision are planned (`plan_snapshot`) so they travel in the feature-store request's round trip, and
    each write is one script call. Campaign jobs (audiences: many members at once, on a worker thread or
    the CLI) use the synchronous `sync_client`: `marketing_states`, `confirm_send`.
    `idempotency_days`: how long a DecideCoupon request id's decision is kept for retries.
    On a Redis Cluster client the writes follow the reservation protocol of the module docstring;
    `reservation_s`: how long a reservation may stay pending before the reaper treats its client as dead.
    """

    def __init__(self, client: Redis | AsyncRedisCluster, config: RedisConfig, idempotency_days: float = 7.0,
                 sync_client: redis.Redis | RedisCluster | None = None, reservation_s: float = 30.0) -> None:
        self.client = client
        self.sync_client = sync_client
        self.config = config
        self.keys = Keys(config.namespace)
        self.idempotency_ttl = int(idempotency_days * DAY)
        self.cluster = isinstance(client, AsyncRedisCluster)
        self.reservation_s = reservation_s
        scripts = {name: client.register_script(body) for name, body in (
            ("issue", _ISSUE), ("show", _SHOW), ("redeem", _REDEEM), ("reserve", _RESERVE),
            ("member_issue", _MEMBER_ISSUE), ("void", _VOID), ("confirm", _CONFIRM), ("release", _RELEASE),
            ("charge", _CHARGE), ("redeem_member", _REDEEM_MEMBER), ("book", _BOOK))}
        self._scripts = scripts
        self._pipelined = PipelinedConnection(config) if not self.cluster and PipelinedConnection.supports(config) \
            else None
        """One Redis: the request-time scripts go on a hiredis pipelined connection (`feature_store.pipelined`),
        which costs the worker a fraction of redis-py's asyncio client per call."""

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        """Run one of the store's scripts: `EVALSHA` on the pipelined connection (the body once after
        `NOSCRIPT`, e.g. after a Redis restart), else through redis-py."""
        script = self._scripts[name]
        if self._pipelined is None:
            return await script(keys=keys, args=args)
        try:
            return await self._pipelined.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self._pipelined.execute("EVAL", script.script, len(keys), *keys, *args)

    def close(self) -> None:
        """Close the pipelined connection (the clients are their owner's to close)."""
        if self._pipelined is not None:
            self._pipelined.close()

    # --- reads ---------------------------------------------------------------------------------------
    def plan_snapshot(self, member_id: str, offers: Sequence[Offer], since: float,
                      request_id: str | None = None, now: float | None = None) -> SnapshotRead:
        """Contacts since `since`, every offer's budget usage and the decision stored under `request_id`; on a
        cluster, with `now`, which offers hold reservations to reap."""
        return SnapshotRead(self.keys, member_id, offers, since, request_id, now if self.cluster else None)

    async def snapshot(self, member_id: str, offers: Sequence[Offer], since: float,
                       request_id: str | None = None, now: float | None = None) -> OfferSnapshot:
        """`plan_snapshot` in a round trip of its own."""
        read = self.plan_snapshot(member_id, offers, since, request_id, now)
        batch = Batch("offer state")
        read.queue(batch)
        with redis_unavailable("read offer state"):
            replies = await batch.pipe.replay(self.client.pipeline(transaction=False)).execute()
        batch.parse(replies)
        return read.result

    async def contacts(self, member_id: str, since_ts: float) -> ContactHistory:
        """The member's contacts (offers shown or issued to them) since `since_ts`, oldest first."""
        return (await self.snapshot(member_id, (), since_ts)).contacts

    async def usage(self, offer_id: str) -> BudgetUsage:
        with redis_unavailable("budget usage"):
            return _usage(await self.client.hgetall(self.keys.offer_budget(offer_id)))

    async def wallet(self, member_id: str, now: float) -> Wallet:
        key = self.keys.wallet(member_id)
        with redis_unavailable("wallet"):
            raw = await self.client.hgetall(key)
        return parse_wallet(key, raw, now)

    async def coupon(self, member_id: str, coupon_id: str, now: float) -> Coupon | None:
        key = self.keys.wallet(member_id)
        with redis_unavailable("coupon"):
            raw = await self.client.hget(key, coupon_id)
        return None if raw is None else Coupon.from_json(key, raw)

    # --- writes --------------------------------------------------------------------------------------
    async def issue(self, offer: Offer, member_id: str, channel: Channel, now: float, request_id: str,
                    request: str, decision: Mapping[str, Any], fatigue: Cap | None = None) -> IssueResult:
        """Reserve budget, log the contact and put the decision's coupon in the member's wallet, or report
        which limit stops it; all or nothing. `request` fingerprints the request the decision answers."""
        cap = offer.per_member_cap
        decision_id, coupon_id = str(decision["decision_id"]), str(decision["coupon_id"])
        coupon = Coupon(coupon_id, member_id, offer.id, decision_id, now, offer.valid_until.timestamp(),
                        offer.redemption_cost)
        if self.cluster:
            limits = [-1 if cap is None else cap.count, now - (cap.period_days * DAY if cap else 0),
                      -1 if fatigue is None else fatigue.count, now - (fatigue.period_days * DAY if fatigue else 0),
                      offer.id, channel.value, _contact_entry(decision_id, offer.id, channel),
                      self.config.contact_ttl_s, coupon_id, coupon.to_json(), self.config.wallet_ttl_s, now]
            with redis_unavailable("issue_coupon"):
                return await self._issue_on_cluster(offer, member_id, now, request_id, request, decision, limits)
        with redis_unavailable("issue_coupon"):
            outcome, stored = await self._script("issue", keys=[
                self.keys.offer_decision(request_id), self.keys.offer_budget(offer.id),
                self.keys.contacts(member_id), self.keys.wallet(member_id),
            ], args=[
                StoredDecision.to_json(request, decision), *_limits(offer), now,
                self.idempotency_ttl, -1 if cap is None else cap.count, now - (cap.period_days * DAY if cap else 0),
                -1 if fatigue is None else fatigue.count, now - (fatigue.period_days * DAY if fatigue else 0),
                offer.id, channel.value, _contact_entry(decision_id, offer.id, channel), self.config.contact_ttl_s,
                coupon_id, coupon.to_json(), self.config.wallet_ttl_s,
            ])
        outcome = outcome.decode()
        return IssueResult(outcome, StoredDecision.from_json(stored) if outcome == "replayed" else None)

    async def _issue_on_cluster(self, offer: Offer, member_id: str, now: float, request_id: str, request: str,
                                decision: Mapping[str, Any], limits: list[object]) -> IssueResult:
        """Steps 1 to 4 of the reservation protocol (module docstring); 4 round trips, 5 with the claim."""
        earlier = await self._claim(request_id, request)
        if earlier is not None:
            return IssueResult("replayed", earlier)
        hold, holds = self.keys.offer_hold(offer.id, request_id), self.keys.offer_holds(offer.id)
        state, token = await self._scripts["reserve"](keys=[self.keys.offer_budget(offer.id), hold, holds], args=[
            request, member_id, *_limits(offer), uuid.uuid4().hex, now + self.reservation_s, self.idempotency_ttl,
            request_id])
        state, token = state.decode(), token.decode()
        if state == "budget_exhausted":
            return IssueResult(state)
        if state == "other_request":
            raise InvalidArgument("request_id", f"{request_id!r} was already used for a different request")
        outcome, detail, mine = await self._scripts["member_issue"](
            keys=[self.keys.offer_request(member_id, request_id), self.keys.contacts(member_id),
                  self.keys.wallet(member_id)],
            args=[StoredDecision.to_json(request, decision), token, self.idempotency_ttl, *limits])
        outcome = outcome.decode()
        if outcome == "released":
            raise Unavailable(f"the reservation of {offer.id} for request {request_id!r} was reaped while the request "
                              f"was under way (over {self.reservation_s:g} s); retry")
        settle = (self._scripts["confirm"](keys=[hold, holds], args=[token, request_id]) if int(mine) else
                  self._scripts["release"](keys=[self.keys.offer_budget(offer.id), hold, holds],
                                           args=[token, request_id]))
        if outcome in ("issued", "replayed"):
            stored = StoredDecision.to_json(request, decision) if outcome == "issued" else detail
            await asyncio.gather(settle, self.client.set(self.keys.offer_decision(request_id), stored,
                                                         ex=self.idempotency_ttl))
            return IssueResult(outcome, StoredDecision.from_json(detail) if outcome == "replayed" else None)
        await settle
        return IssueResult(outcome)

    async def _claim(self, request_id: str, request: str) -> StoredDecision | None:
        """Cluster step 1: bind the request id to this request, so one id never decides for two requests.
        Returns an earlier request's record or a decision made meanwhile; None when this request may go on."""
        raw = await self.client.set(self.keys.offer_decision(request_id), StoredDecision.to_json(request, {}),
                                    nx=True, ex=self.idempotency_ttl, get=True)
        if raw is None:
            return None
        earlier = StoredDecision.from_json(raw)
        return None if earlier.pending and earlier.request == request else earlier

    async def reap(self, snapshot: OfferSnapshot, offers: Sequence[Offer], now: float) -> OfferSnapshot:
        """Settle the reservations of dead clients (cluster) among `snapshot.expired_holds`, and the budgets
        they held: each abandoned token is voided in its member's slot first, then its hold is released (or
        confirmed, if it had issued). Returns the snapshot with those budgets read again; no I/O if none."""
        if not snapshot.expired_holds:
            return snapshot
        usage = dict(snapshot.usage)
        with redis_unavailable("reap reservations"):
            for offer in (o for o in offers if o.id in snapshot.expired_holds):
                await self._reap_offer(offer.id, now)
                usage[offer.id] = _usage(await self.client.hgetall(self.keys.offer_budget(offer.id)))
        return OfferSnapshot(snapshot.contacts, usage, snapshot.stored)

    async def _reap_offer(self, offer_id: str, now: float, batch: int = 100) -> int:
        holds, reaped = self.keys.offer_holds(offer_id), 0
        for raw_id in await self.client.zrangebyscore(holds, "-inf", now, start=0, num=batch):
            request_id = raw_id.decode()
            hold = self.keys.offer_hold(offer_id, request_id)
            h = {k.decode(): v.decode() for k, v in (await self.client.hgetall(hold)).items()}
            if h.get("state") != "pending":  # settled meanwhile, or expired with its record
                await self.client.zrem(holds, request_id)
                continue
            issued = await self._scripts["void"](keys=[self.keys.offer_request(h["member"], request_id)],
                                                 args=[h["token"], self.idempotency_ttl])
            if int(issued):
                await self._scripts["confirm"](keys=[hold, holds], args=[h["token"], request_id])
            else:
                reaped += await self._scripts["release"](keys=[self.keys.offer_budget(offer_id), hold, holds],
                                                         args=[h["token"], request_id])
        return reaped

    async def store_decision(self, request_id: str, request: str, decision: Mapping[str, Any],
                             member_id: str | None = None) -> StoredDecision | None:
        """Remember a decision that issued nothing; returns the one stored first if a retry got there before.

        On a cluster the member's request record is the authority (a concurrent retry may have issued there),
        so `member_id` is required."""
        key = self.keys.offer_decision(request_id)
        if self.cluster:
            if member_id is None:
                raise ValueError("store_decision on Redis Cluster needs the member id")
            record = self.keys.offer_request(member_id, request_id)
            with redis_unavailable("store_decision"):
                earlier = await self._claim(request_id, request)
                if earlier is not None:
                    return earlier
                pipe = self.client.pipeline(transaction=False)
                pipe.hsetnx(record, "decision", StoredDecision.to_json(request, decision))
                pipe.hget(record, "decision")
                pipe.expire(record, self.idempotency_ttl)
                created, raw, _ = await pipe.execute()
                await self.client.set(key, raw, ex=self.idempotency_ttl)
            return None if created else StoredDecision.from_json(raw)
        with redis_unavailable("store_decision"):
            value = StoredDecision.to_json(request, decision)
            raw = (await self.client.set(key, value, nx=True, ex=self.idempotency_ttl, get=True)
                   if self._pipelined is None else
                   await self._pipelined.execute("SET", key, value, "NX", "GET", "EX", self.idempotency_ttl))
        return None if raw is None else StoredDecision.from_json(raw)

    async def show(self, member_id: str, channel: Channel, decision_id: str, offers: Sequence[Offer],
                   now: float) -> list[bool]:
        """Record that `offers` were shown to the member (contacts: they count toward caps and fatigue) and
        charge each invitation (an offer shown, not issued) to its budget; per offer, whether it was shown:
        False for an invitation whose budget is spent (nothing recorded for it)."""
        if not offers:
            return []
        if self.cluster:
            return await self._show_on_cluster(member_id, channel, decision_id, offers, now)
        args: list[object] = [self.config.contact_ttl_s, now]
        for o in offers:
            limits = [-1, -1, 0] if o.kind.is_coupon else _limits(o)
            args += [_contact_entry(decision_id, o.id, channel), *limits]
        with redis_unavailable("show offers"):
            shown = await self._script("show", keys=[self.keys.contacts(member_id),
                                           *(self.keys.offer_budget(o.id) for o in offers)], args=args)
        return [bool(x) for x in shown]

    async def _show_on_cluster(self, member_id: str, channel: Channel, decision_id: str, offers: Sequence[Offer],
                               now: float) -> list[bool]:
        """Charge each invitation in its offer's slot, then record what was shown in the member's: 2 round trips.
        A client that dies in between leaves an invitation charged but not recorded (under-, never overspent)."""
        with redis_unavailable("show offers"):
            charged = await asyncio.gather(*(
                self._scripts["charge"](keys=[self.keys.offer_budget(o.id)], args=_limits(o))
                for o in offers if not o.kind.is_coupon))
            verdicts = iter(charged)
            shown = [True if o.kind.is_coupon else bool(next(verdicts)) for o in offers]
            contacts, ttl = self.keys.contacts(member_id), self.config.contact_ttl_s
            pipe = self.client.pipeline(transaction=False)
            entries = {_contact_entry(decision_id, o.id, channel): now for o, ok in zip(offers, shown, strict=True)
                       if ok}
            if entries:
                pipe.zadd(contacts, entries)
            pipe.zremrangebyscore(contacts, "-inf", now - ttl)
            pipe.expire(contacts, ttl)
            await pipe.execute()
        return shown

    async def redeem(self, coupon: Coupon, offer: Offer, order_value: float, now: float, redemption_id: str) -> bool:
        """Record the redemption once and book its cost; False (and no change) when it was redeemed before."""
        if coupon.redeemed_ts is None:
            if coupon.status_at(now) is CouponStatus.EXPIRED:
                raise FailedPrecondition(f"coupon {coupon.coupon_id} expired")
            if order_value < offer.min_spend:
                raise FailedPrecondition(f"order_value: {order_value:g} is below the offer's minimum spend "
                                         f"{offer.min_spend:g}")
        if self.cluster:
            with redis_unavailable("redeem_coupon"):
                code, _ = await self._scripts["redeem_member"](
                    keys=[self.keys.wallet(coupon.member_id), self.keys.offer_stats(coupon.member_id)],
                    args=[coupon.coupon_id, now, redemption_id, self.config.wallet_ttl_s])
                if int(code):
                    await self._scripts["book"](keys=[self.keys.offer_budget(offer.id),
                                                      self.keys.offer_redeemed(offer.id, coupon.coupon_id)],
                                                args=[cents(offer.discount(order_value)), self.config.wallet_ttl_s])
            if int(code) == 0:
                raise NotFound(f"coupon_id: member {coupon.member_id!r} holds no coupon {coupon.coupon_id!r}")
            return int(code) == 1
        with redis_unavailable("redeem_coupon"):
            code, _ = await self._script("redeem", keys=[
                self.keys.wallet(coupon.member_id), self.keys.offer_budget(offer.id),
                self.keys.offer_stats(coupon.member_id),
            ], args=[coupon.coupon_id, now, redemption_id, self.config.wallet_ttl_s,
                     cents(offer.discount(order_value))])
        if int(code) == 0:
            raise NotFound(f"coupon_id: member {coupon.member_id!r} holds no coupon {coupon.coupon_id!r}")
        return int(code) == 1

    # --- campaign jobs (synchronous, many members) ---------------------------------------------------
    def _sync(self) -> redis.Redis:
        if self.sync_client is None:
            raise RuntimeError("this OfferStore was built without a synchronous client (campaign jobs need one)")
        return self.sync_client

    def marketing_states(self, member_ids: Sequence[str], since: float, now: float,
                         wallets: bool = True) -> list[tuple[ContactHistory, Wallet]]:
        """Contacts since `since` and (unless `wallets` is False: empty) the wallet of many members, in one
        round trip (audiences)."""
        per = 2 if wallets else 1
        with redis_unavailable("read marketing state"):
            pipe = self._sync().pipeline(transaction=False)
            for m in member_ids:
                pipe.zrangebyscore(self.keys.contacts(m), since, "+inf", withscores=True)
                if wallets:
                    pipe.hgetall(self.keys.wallet(m))
            raw = pipe.execute()
        return [(parse_contacts(self.keys.contacts(m), raw[per * i], since),
                 parse_wallet(self.keys.wallet(m), raw[per * i + 1], now) if wallets else Wallet((), now))
                for i, m in enumerate(member_ids)]

    def confirm_send(self, send_id: str, offer_id: str, channel: Channel, member_ids: Sequence[str],
                     sent_at: float | None, now: float, batch: int = 2_000) -> tuple[bool, float]:
        """Record a campaign send as one contact per member (decision id = send id).

        Returns (first time, the send's time). Contacts are written before the send is marked done, and
        writing them again changes nothing (same sorted-set member, same score), so a retry after any
        failure completes the send exactly once; a retry without `sent_at` reuses the first one's time. The
        same send id with another offer, channel, member list or time is refused: it would mix two sends.
        """
        client = self._sync()
        digest = hashlib.blake2b("\x1f".join([offer_id, channel.value, *sorted(member_ids)]).encode(),
                                 digest_size=16).hexdigest()
        key = self.keys.offer_send(send_id)
        ttl = self.config.contact_ttl_s
        with redis_unavailable("confirm_send"):
            raw = client.get(key)
            earlier = None if raw is None else json.loads(raw)
            if earlier is not None and (earlier["digest"] != digest or
                                        sent_at is not None and abs(sent_at - earlier["sent_at"]) > 1e-3):
                raise AlreadyExists(f"send_id: {send_id!r} was confirmed with another offer, channel, member list "
                                    "or time; use a new send id")
            when = earlier["sent_at"] if earlier is not None else (now if sent_at is None else sent_at)
            entry = _contact_entry(send_id, offer_id, channel)
            for start in range(0, len(member_ids), batch):
                pipe = client.pipeline(transaction=False)
                for m in member_ids[start:start + batch]:
                    contacts = self.keys.contacts(m)
                    pipe.zadd(contacts, {entry: when})
                    pipe.zremrangebyscore(contacts, "-inf", now - ttl)
                    pipe.expire(contacts, ttl)
                pipe.execute()
            first = client.set(key, json.dumps({"digest": digest, "sent_at": when}), nx=True, ex=ttl)
        return bool(first), when
