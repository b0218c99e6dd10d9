"""Live updates from behaviour events, with the same tier and lifecycle rules as the batch job.

A batch is applied in two steps, so the caller can log it in between (`service.ingest`: accept -> log ->
apply):

1. `prepare` (two round trips): the pointer, whether each event was already taken (its dedup claim,
   `seen:event_id:{id}`, or `seen:{digest}` of its fields when the caller has no ids) and the identity link
   of every anonymous id; then the stored state of the members involved (signup, purchases, points, tier).
   The result is a `LivePlan`: which rows are fresh and every write they cause.
2. `commit` (one round trip): one Lua script takes the plan's claims and makes its writes together, or
   does nothing if any claim was taken meanwhile (a concurrent retry). Redis runs a script without
   interleaving, so an event is either claimed and applied or neither: a retry after any failure, even
   a timeout whose reply was lost, applies it exactly once. The script checks every record it will edit
   before it writes (a script's writes are not rolled back on error).

Events naming an item the materialised catalogue (`item:{id}` of the served generation) lacks are refused
with `InvalidArgument` naming `events[i].item_id` (rows are numbered as the caller sent them): every batch
job indexes events against the item table, so an unknown item would stop the next training run. Unknown
members are accepted: the batch jobs make them new members (`domain.derive.complete_members`).

The script touches many members' keys at once, so live updates need a single Redis (as offers do), not
Redis Cluster.

Member records and item lists are packed values (`feature_store.packed`): activity counters are added in
the script; stage, tier and timestamps are computed in Python from the state read in step 1, so two
concurrent batches for the same member may interleave: the later write wins until the next event or
materialisation. Lists (recent, purchased) stay distinct, newest first and bounded; the purchased list
keeps each item's latest purchase time, so an event that arrives late never makes an item look newer
than it is. Returns do not lower points or tiers live: downgrades wait for the batch job.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import redis
from redis.cluster import RedisCluster

from omnirec.domain.errors import InvalidArgument, Unavailable
from omnirec.domain.lifecycle import LifecycleRules, lifecycle_stage
from omnirec.domain.schema import check_events
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import ONLINE_STORE, Channel, EventType
from omnirec.feature_store import packed
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import redis_call
from omnirec.feature_store.keys import Keys, event_digest
from omnirec.feature_store.model import PROFILE_FIELDS, PROFILE_POSITION, TS, MemberProfile
from omnirec.feature_store.reader import parse_pointer


@dataclass
class _MemberState:
    """What live rules need of a member, read in step 2 and advanced event by event."""

    signup_ts: float
    last_seen_ts: float | None
    last_purchase_ts: float | None
    prev_purchase_ts: float | None
    points: int
    tier: str
    activity: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @classmethod
    def of(cls, profile: MemberProfile) -> _MemberState:
        return cls(profile.signup_ts, profile.last_seen_ts, profile.last_purchase_ts, profile.prev_purchase_ts,
                   profile.points, profile.tier)


@dataclass(frozen=True)
class LiveReport:
    events: int
    applied: int
    duplicates: int
    """Events skipped because the same event was applied before (dedup)."""
    members_updated: int
    links: int
    credited: int = 0
    """Anonymous items credited to members by the links."""


APPLY = packed.LIBRARY + """
-- KEYS: n dedup claims, then the keys the writes touch. ARGV: n, claim ttl, then writes: name, key index
-- (1-based, after the claims), argc, args... Returns {i, 0} when claim i is already taken (nothing
-- written), else {0, items credited}.
local n = tonumber(ARGV[1])
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then return {i, 0} end
end
local ops, i = {}, 3
while i <= #ARGV do
  local argc, args = tonumber(ARGV[i + 2]), {}
  for j = 1, argc do args[j] = ARGV[i + 2 + j] end
  ops[#ops + 1] = {ARGV[i], KEYS[n + tonumber(ARGV[i + 1])], args}
  i = i + 3 + argc
end
for _, op in ipairs(ops) do
  if op[1] == 'patch' then
    local raw = redis.call('GET', op[2])
    if raw then
      local fields, err = record_fields(op[2], raw, op[3][1])
      if not fields then return err end
    end
  end
end
for c = 1, n do redis.call('SET', KEYS[c], '1', 'EX', ARGV[2]) end
local credited = 0
for _, op in ipairs(ops) do
  local name, key, args = op[1], op[2], op[3]
  if name == 'patch' then
    patch_record(key, args)
  elseif name == 'push' then
    push_distinct(key, args)
  elseif name == 'timed' then
    push_timed(key, args)
  elseif name == 'stock' then  -- args: item, delta, ttl (0 keeps it)
    redis.call('HINCRBY', key, args[1], args[2])
    if args[3] ~= '0' then redis.call('EXPIRE', key, args[3]) end
  elseif name == 'link' then  -- args: member id, ts, ttl
    redis.call('HSET', key, 'member_id', args[1], '_ts', args[2])
    redis.call('EXPIRE', key, args[3])
  elseif name == 'credit' then  -- key: an anonymous list; args: index of the member's list, limit, ttl
    local raw = redis.call('GET', key)
    if raw and raw ~= '' then
      local items, push = split(raw), {args[2], args[3]}
      for j = #items, 1, -1 do push[#push + 1] = items[j] end
      push_distinct(KEYS[n + tonumber(args[1])], push)
      redis.call('DEL', key)
      credited = credited + #items
    end
  end
end
return {0, credited}
"""
"""Claims and writes of one batch, all or nothing (see the module docstring)."""


class _Writes:
    """The writes of one batch as the `APPLY` script's arguments."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.args: list[object] = []
        self._index: dict[str, int] = {}

    def key(self, key: str) -> int:
        if key not in self._index:
            self.keys.append(key)
            self._index[key] = len(self.keys)
        return self._index[key]

    def add(self, name: str, key: str, *args: object) -> None:
        self.args += [name, self.key(key), len(args), *args]


@dataclass(frozen=True)
class LivePlan:
    """What `commit` will write for a batch: the claims of its fresh events and every write they cause."""

    fresh: tuple[bool, ...]
    """Per input row: not seen before (True) or a duplicate (False)."""
    claims: tuple[str, ...]
    writes: tuple[str, ...]
    """Keys the writes touch (after the claims in KEYS)."""
    args: tuple[object, ...]
    report: LiveReport

    @property
    def empty(self) -> bool:
        return not self.claims and not self.args


class ClaimTaken(Exception):
    """A concurrent request claimed one of the plan's events between `prepare` and `commit`; nothing was
    written. Prepare again: that event is now a duplicate."""


def _fmt_ts(ts: float | None) -> str:
    return "" if ts is None else str(int(ts))


class LiveUpdater:
    """Applies behaviour events to the current generation, and identity links to the durable map."""

    def __init__(self, client: redis.Redis | RedisCluster, config: RedisConfig, tiers: TierLadder,
                 rules: LifecycleRules, dedup: bool = True) -> None:
        self.client = client
        self.config = config
        self.tiers = tiers
        self.rules = rules
        """Loyalty points per currency unit spent, as the retailer's CRM awards them."""
        self.dedup = dedup
        self.base = Keys(config.namespace)
        self._apply = client.register_script(APPLY)

    def _execute(self, pipe: Any, what: str) -> list[Any]:
        with redis_call(what):
            return pipe.execute()  # type: ignore[no-any-return]

    def apply(self, events: pa.Table, event_ids: Sequence[str] | None = None,
              before_commit: Callable[[LivePlan], None] | None = None) -> LiveReport:
        """Apply a batch of event rows (`domain.schema.EVENT_SCHEMA`; validated here), each event once.

        `before_commit` sees the first plan before anything is written (the service logs its fresh events).
        """
        plan = self.prepare(events, event_ids)
        if before_commit is not None:
            before_commit(plan)
        for _ in range(_ATTEMPTS):
            try:
                return self.commit(plan)
            except ClaimTaken:  # a concurrent retry took some of them: those are duplicates now
                plan = self.prepare(events, event_ids)
        raise Unavailable(f"live events: claims kept being taken by concurrent requests ({_ATTEMPTS} tries)")

    def claim_key(self, row: dict[str, Any], event_id: str | None) -> str:
        """An event's dedup claim: its id when the caller has one (the contract), else its fields' digest."""
        return self.base.seen(f"event_id:{event_id}" if event_id is not None else event_digest(*row.values()))

    def prepare(self, events: pa.Table, event_ids: Sequence[str] | None = None) -> LivePlan:
        """Which events are fresh and what applying them writes; reads only (two round trips).

        `event_ids` (one per row) are the dedup keys when given; otherwise an event is identified by its fields.
        """
        rows = check_events(events, "<live events>").to_pylist()
        if event_ids is not None and len(event_ids) != len(rows):
            raise ValueError(f"{len(event_ids)} event ids for {len(rows)} events")
        claims = [self.claim_key(r, None if event_ids is None else event_ids[i]) for i, r in enumerate(rows)]
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.base.pointer(), ["generation", "schema"])
        if self.dedup:
            for key in claims:
                pipe.exists(key)
        anons = sorted({r["anonymous_id"] for r in rows if r["anonymous_id"]})
        for anon in anons:
            pipe.hget(self.base.identity(anon), "member_id")
        replies = self._execute(pipe, "live claims")
        k = self.base.at(parse_pointer(self.base, replies[0]))
        fresh = [not taken for taken in replies[1:1 + len(rows)]] if self.dedup else [True] * len(rows)
        links = {a: (v.decode() if v else None) for a, v in zip(anons, replies[1 + len(rows) * self.dedup:],
                                                                strict=True)}
        todo = sorted((r for r, ok in zip(rows, fresh, strict=True) if ok), key=lambda r: r["ts"])

        new_links = {r["anonymous_id"]: r["member_id"] for r in todo
                     if r["member_id"] and r["anonymous_id"] and links.get(r["anonymous_id"]) != r["member_id"]}
        for r in todo:
            r["member_id"] = r["member_id"] or links.get(r["anonymous_id"] or "")
        members = sorted({r["member_id"] for r in todo if r["member_id"]})
        states, unknown = self._read_states(k, members, sorted({r["item_id"] for r in todo if r["item_id"]}))
        if unknown:
            i = next(i for i, r in enumerate(rows) if fresh[i] and r["item_id"] in unknown)
            raise InvalidArgument(f"events[{i}].item_id", f"unknown item {rows[i]['item_id']!r}: not in the "
                                                          "materialised item catalogue")

        writes = _Writes()
        for r in todo:
            self._queue_event(writes, k, r, states.get(r["member_id"]) if r["member_id"] else None)
        for member_id, state in states.items():
            if state is not None:
                self._queue_state(writes, k, member_id, state)
        for anon, member_id in new_links.items():
            self._queue_link(writes, k, anon, member_id)
        report = LiveReport(len(rows), len(todo), len(rows) - len(todo),
                            sum(1 for s in states.values() if s is not None), len(new_links))
        return LivePlan(tuple(fresh), tuple(c for c, ok in zip(claims, fresh, strict=True) if ok and self.dedup),
                        tuple(writes.keys), tuple(writes.args), report)

    def commit(self, plan: LivePlan) -> LiveReport:
        """Take the plan's claims and make its writes in one script, or raise `ClaimTaken` having written nothing."""
        if plan.empty:
            return plan.report
        with redis_call("live writes"):
            taken, credited = self._apply(keys=[*plan.claims, *plan.writes],
                                          args=[len(plan.claims), self.config.dedup_ttl_s, *plan.args])
        if taken:
            raise ClaimTaken(plan.claims[taken - 1])
        return replace(plan.report, credited=credited)

    def _read_states(self, k: Keys, members: list[str],
                     items: list[str]) -> tuple[dict[str, _MemberState | None], set[str]]:
        """The members' stored state, and which of `items` the materialised catalogue lacks (one round trip)."""
        if not members and not items:
            return {}, set()
        pipe = self.client.pipeline(transaction=False)
        for m in members:
            pipe.get(k.member(m))
        for item in items:
            pipe.exists(k.item(item))
        raw = self._execute(pipe, "live state")
        states = {m: None if r is None else _MemberState.of(MemberProfile.from_packed(m, k.member(m), r))
                  for m, r in zip(members, raw[:len(members)], strict=True)}
        return states, {item for item, found in zip(items, raw[len(members):], strict=True) if not found}

    def _queue_event(self, writes: _Writes, k: Keys, row: dict[str, Any], state: _MemberState | None) -> None:
        ts, item, kind = float(row["ts"]), row["item_id"], EventType(row["event_type"])
        member_id = row["member_id"]
        if item and kind is not EventType.RETURN:
            key = k.recent(member_id) if member_id else k.anon_recent(row["anonymous_id"])
            writes.add("push", key, self.config.recent_items, self._ttl, item)
        if kind is EventType.PURCHASE and item:
            channel = Channel(row["channel"])
            store = row["store_id"] if channel.is_physical else ONLINE_STORE
            writes.add("stock", k.stock(store), item, -int(row["quantity"]), self.config.feature_ttl_s or 0)
            if member_id:
                writes.add("timed", k.purchased(member_id), self.config.purchased_items, self._ttl, item, int(ts))
        if state is None:
            return
        state.last_seen_ts = max(state.last_seen_ts or ts, ts)
        state.activity[row["channel"]] += 1
        if kind is EventType.PURCHASE and (state.last_purchase_ts is None or ts > state.last_purchase_ts):
            state.prev_purchase_ts, state.last_purchase_ts = state.last_purchase_ts, ts
        if kind is EventType.PURCHASE:
            state.points += math.floor(row["price"] * row["quantity"] * self.tiers.points_per_unit)
            state.tier = self.tiers.upgraded(state.tier, state.points)

    @property
    def _ttl(self) -> int:
        """Feature keys expire with their generation (0: keep the key's TTL), or after `feature_ttl_s`."""
        return self.config.feature_ttl_s or 0

    def _queue_state(self, writes: _Writes, k: Keys, member_id: str, state: _MemberState) -> None:
        """Write the advanced state; the stage comes from the shared rule at the member's latest event."""
        now = state.last_seen_ts or time.time()
        stage = lifecycle_stage(self.rules, now, state.signup_ts, state.last_purchase_ts, state.prev_purchase_ts)
        values = {"last_seen_ts": _fmt_ts(state.last_seen_ts), "last_purchase_ts": _fmt_ts(state.last_purchase_ts),
                  "prev_purchase_ts": _fmt_ts(state.prev_purchase_ts), "points": state.points, "tier": state.tier,
                  "lifecycle_stage": stage.value, TS: int(time.time())}
        args: list[object] = [len(PROFILE_FIELDS), self._ttl, len(values)]
        for name, value in values.items():
            args += [PROFILE_POSITION[name] + 1, value]
        for channel, n in state.activity.items():
            args += [PROFILE_POSITION[f"act_{channel}"] + 1, n]
        writes.add("patch", k.member(member_id), *args)

    def _queue_link(self, writes: _Writes, k: Keys, anonymous_id: str, member_id: str) -> None:
        """The link, and the anonymous items credited to the member as their newest (the browsing happened
        right before the login)."""
        writes.add("link", k.identity(anonymous_id), member_id, int(time.time()), self.config.identity_ttl_s)
        writes.add("credit", k.anon_recent(anonymous_id), writes.key(k.recent(member_id)), self.config.recent_items,
                   self._ttl)

    def link(self, anonymous_id: str, member_id: str) -> int:
        """Record that `anonymous_id` is `member_id` (a login) and credit its recent items to the member.

        Two round trips: the pointer, then one script. Linking again is harmless (the same link, nothing left
        to credit); a later link of the same id to another member replaces this one. Returns how many items
        were credited.
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.base.pointer(), ["generation", "schema"])
        (raw_pointer,) = self._execute(pipe, "link")
        writes = _Writes()
        self._queue_link(writes, self.base.at(parse_pointer(self.base, raw_pointer)), anonymous_id, member_id)
        plan = LivePlan((), (), tuple(writes.keys), tuple(writes.args), LiveReport(0, 0, 0, 0, 1))
        return self.commit(plan).credited


_ATTEMPTS = 5
