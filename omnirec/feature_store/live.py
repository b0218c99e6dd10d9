"""Live updates from behaviour events, with the same tier and lifecycle rules as the batch job.

A batch is applied in two steps, so the caller can log it in between (`service.ingest`: accept -> log ->
apply):

1. `prepare` (two round trips): the pointer and the identity link of every anonymous id; then whether each
   event was already taken (its dedup claims), the stored state of the members involved (signup,
   purchases, points, tier), which items exist and the anonymous lists that new links credit. The result
   is a `LivePlan`: which rows are fresh and every write they cause.
2. `commit` (one round trip): the writes are grouped by the Redis Cluster hash tag of their keys (a
   member's record and lists; a store's stock; an anonymous id's list and link), and each group carries a
   dedup claim per event, `seen:{<tag>}:event_id:<id>` (or `seen:{<tag>}:<digest>` of its fields when the
   caller has no ids), in the same slot as the writes it guards. One Lua script per slot takes the
   group's claims and makes its writes together, or does nothing if any claim was taken meanwhile (a
   concurrent retry): on one Redis all groups go in one script call, on a cluster one call per slot, in one
   pipeline. Redis runs a script without interleaving, so within a group an event is either claimed and
   applied or neither, and a retry after any failure (even a timeout whose reply was lost, or a cluster
   commit that reached some slots only) applies each group of each event exactly once. The script checks
   every record it will edit before it writes (a script's writes are not rolled back on error).

An anonymous event is claimed under the member its id is linked to; a retry after the link appeared is
recognised by its claim under the anonymous id (read in step 1). A new link (an event naming both ids, or
`link`) credits the anonymous list read in step 1 to the member's recent items, and drops the anonymous
list only if it is unchanged (on a cluster these are two slots: an item browsed anonymously between the
two steps stays in the anonymous list, which readers no longer use once the id is linked). Anonymous events
in the same batch as their id's new link are applied to the member.

Events naming an item the materialised catalogue (`item:{id}` of the served generation) lacks are refused
with `InvalidArgument` naming `events[i].item_id` (rows are numbered as the caller sent them): every batch
job indexes events against the item table, so an unknown item would stop the next training run. Unknown
members are accepted: the batch jobs make them new members (`domain.derive.complete_members`).

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
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

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
    touched: bool = False
    """A fresh event of the member's was queued: the state is written back."""

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
-- (1-based, after the claims), argc, args... Returns {i} when claim i is already taken (nothing written),
-- else {0}.
local n = tonumber(ARGV[1])
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then return {i} end
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
  elseif name == 'drop' then  -- args: the value read when the plan was made; dropped only if unchanged
    if redis.call('GET', key) == args[1] then redis.call('DEL', key) end
  end
end
return {0}
"""
"""Claims and writes of one slot's groups of a batch, all or nothing (see the module docstring)."""


class _Writes:
    """The claims and writes of one script call as the `APPLY` script's arguments."""

    def __init__(self) -> None:
        self.claims: list[str] = []
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


class _Calls:
    """A batch's script calls: one on a single Redis, one per slot on a cluster (a script's keys must share a
    slot there); each write or claim goes to the call of its key's slot."""

    def __init__(self, cluster: bool) -> None:
        self.cluster = cluster
        self.calls: dict[int, _Writes] = {}

    def at(self, key: str) -> _Writes:
        return self.calls.setdefault(key_slot(key.encode()) if self.cluster else 0, _Writes())

    def claim(self, key: str) -> None:
        self.at(key).claims.append(key)

    def add(self, name: str, key: str, *args: object) -> None:
        self.at(key).add(name, key, *args)


@dataclass(frozen=True)
class ScriptCall:
    claims: tuple[str, ...]
    writes: tuple[str, ...]
    """Keys the writes touch (after the claims in KEYS)."""
    args: tuple[object, ...]


@dataclass(frozen=True)
class LivePlan:
    """What `commit` will write for a batch: the claims of its fresh events and every write they cause, as
    script calls (one per slot on a cluster)."""

    fresh: tuple[bool, ...]
    """Per input row: not seen before (True) or a duplicate (False); an event some of whose groups were
    applied before (a cluster commit cut short) is fresh, and only its other groups are written."""
    calls: tuple[ScriptCall, ...]
    report: LiveReport

    @property
    def empty(self) -> bool:
        return not any(c.claims or c.args for c in self.calls)

    @property
    def claims(self) -> tuple[str, ...]:
        return tuple(c for call in self.calls for c in call.claims)


class ClaimTaken(Exception):
    """A concurrent request claimed one of the plan's events between `prepare` and `commit`; nothing was
    written for that event's group (on a cluster other slots' groups may have been). Prepare again: what was
    taken is now a duplicate."""


@dataclass(frozen=True)
class _Row:
    """One event row, resolved: the member it is credited to, and its dedup claims."""

    row: dict[str, Any]
    member_id: str | None
    home: str
    """The claim of its member's (or, unlinked, its anonymous id's) group."""
    home_alias: str | None
    """Its claim under its anonymous id when it is credited to a member: taken by an attempt made before
    the link, which makes the event a duplicate."""
    stock: str | None
    """The claim of its store's stock group (purchases of an item)."""


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
        self.cluster = isinstance(client, RedisCluster)
        self._apply = client.register_script(APPLY)
        self._loaded = False

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

    def claim_id(self, row: dict[str, Any], event_id: str | None) -> str:
        """What identifies an event in its claims: its id when the caller has one (the contract), else its
        fields' digest."""
        return f"event_id:{event_id}" if event_id is not None else event_digest(*row.values())

    def _resolve(self, rows: list[dict[str, Any]], event_ids: Sequence[str] | None, links: dict[str, str | None],
                 new_links: dict[str, str]) -> list[_Row]:
        out = []
        for i, r in enumerate(rows):
            claim = self.claim_id(r, None if event_ids is None else event_ids[i])
            anon = r["anonymous_id"]
            member = r["member_id"] or new_links.get(anon or "") or links.get(anon or "")
            stock = None
            if EventType(r["event_type"]) is EventType.PURCHASE and r["item_id"]:
                stock = self.base.seen(r["store_id"] if Channel(r["channel"]).is_physical else ONLINE_STORE, claim)
            out.append(_Row(r, member, self.base.seen(member or anon, claim),
                            self.base.seen(anon, claim) if anon and member else None, stock))
        return out

    def prepare(self, events: pa.Table, event_ids: Sequence[str] | None = None) -> LivePlan:
        """Which events are fresh and what applying them writes; reads only (two round trips).

        `event_ids` (one per row) are the dedup keys when given; otherwise an event is identified by its fields.
        """
        rows = check_events(events, "<live events>").to_pylist()
        if event_ids is not None and len(event_ids) != len(rows):
            raise ValueError(f"{len(event_ids)} event ids for {len(rows)} events")
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.base.pointer(), ["generation", "schema"])
        anons = sorted({r["anonymous_id"] for r in rows if r["anonymous_id"]})
        for anon in anons:
            pipe.hget(self.base.identity(anon), "member_id")
        replies = self._execute(pipe, "live links")
        k = self.base.at(parse_pointer(self.base, replies[0]))
        links = {a: (v.decode() if v else None) for a, v in zip(anons, replies[1:], strict=True)}
        new_links = {r["anonymous_id"]: r["member_id"] for r in rows
                     if r["member_id"] and r["anonymous_id"] and links.get(r["anonymous_id"]) != r["member_id"]}
        resolved = self._resolve(rows, event_ids, links, new_links)
        state = self._read_state(k, resolved, new_links)

        calls = _Calls(self.cluster)
        fresh_rows = []
        for i, r in enumerate(resolved):
            home = not state.is_taken(r.home) and not (r.home_alias is not None and state.is_taken(r.home_alias))
            stock = r.stock is not None and not state.is_taken(r.stock)
            if self.dedup:
                for claim, ok in ((r.home, home), (r.stock, stock)):
                    if ok and claim is not None:
                        calls.claim(claim)
            if home or stock:
                fresh_rows.append((i, r, home, stock))
        unknown = next(((i, r) for i, r, _, _ in fresh_rows if r.row["item_id"] in state.unknown_items), None)
        if unknown is not None:
            i, r = unknown
            raise InvalidArgument(f"events[{i}].item_id", f"unknown item {r.row['item_id']!r}: not in the "
                                                          "materialised item catalogue")
        for _, r, home, stock in sorted(fresh_rows, key=lambda f: f[1].row["ts"]):
            self._queue_event(calls, k, r, state.members.get(r.member_id) if r.member_id and home else None,
                              home, stock)
        for member_id, member in state.members.items():
            if member is not None and member.touched:
                self._queue_state(calls, k, member_id, member)
        credited = sum(self._queue_link(calls, k, anon, member_id, state.anon_lists.get(anon))
                       for anon, member_id in new_links.items())
        fresh = {i for i, *_ in fresh_rows}
        report = LiveReport(len(rows), len(fresh), len(rows) - len(fresh),
                            sum(1 for m in state.members.values() if m is not None and m.touched), len(new_links),
                            credited)
        return LivePlan(tuple(i in fresh for i in range(len(rows))),
                        tuple(ScriptCall(tuple(w.claims), tuple(w.keys), tuple(w.args)) for w in calls.calls.values()),
                        report)

    def commit(self, plan: LivePlan) -> LiveReport:
        """Take the plan's claims and make its writes, one script per slot, or raise `ClaimTaken`: nothing was
        written for the group whose claim was taken (on a cluster, other slots' groups may have been)."""
        calls = [c for c in plan.calls if c.claims or c.args]
        if not calls:
            return plan.report
        with redis_call("live writes"):
            if not self.cluster:
                results = [self._apply(keys=[*c.claims, *c.writes], args=[len(c.claims), self.config.dedup_ttl_s,
                                                                          *c.args]) for c in calls]
            else:
                results = self._on_slots(calls)
        for call, (taken, *_) in zip(calls, results, strict=True):
            if taken:
                raise ClaimTaken(call.claims[taken - 1])
        return plan.report

    def _on_slots(self, calls: list[ScriptCall]) -> list[Any]:
        """One pipeline of script calls, each routed to its slot's node (cluster). The script is loaded on
        every primary first, and again if a node lost it (restart, failover); calls that ran before then find
        their claims taken when sent again, so `apply` prepares the rest afresh."""
        if not self._loaded:
            self.client.script_load(APPLY)
            self._loaded = True
        try:
            return self._slot_pipeline(calls).execute()  # type: ignore[no-any-return]
        except redis.exceptions.NoScriptError:
            self.client.script_load(APPLY)
            return self._slot_pipeline(calls).execute()  # type: ignore[no-any-return]

    def _slot_pipeline(self, calls: list[ScriptCall]) -> Any:
        pipe = self.client.pipeline(transaction=False)
        for c in calls:
            pipe.execute_command("EVALSHA", self._apply.sha, len(c.claims) + len(c.writes), *c.claims, *c.writes,
                                 len(c.claims), self.config.dedup_ttl_s, *c.args)
        return pipe

    def _read_state(self, k: Keys, rows: list[_Row], new_links: dict[str, str]) -> _State:
        """The events' claims, the members' stored state, which items the catalogue lacks and the anonymous
        lists new links credit (one round trip)."""
        claims = sorted({c for r in rows for c in (r.home, r.home_alias, r.stock) if c is not None and self.dedup})
        members = sorted({r.member_id for r in rows if r.member_id})
        items = sorted({r.row["item_id"] for r in rows if r.row["item_id"]})
        anons = sorted(new_links)
        pipe = self.client.pipeline(transaction=False)
        for c in claims:
            pipe.exists(c)
        for m in members:
            pipe.get(k.member(m))
        for item in items:
            pipe.exists(k.item(item))
        for anon in anons:
            pipe.get(k.anon_recent(anon))
        raw = iter(self._execute(pipe, "live state"))
        taken = {c for c in claims if next(raw)}
        states = {m: None if r is None else _MemberState.of(MemberProfile.from_packed(m, k.member(m), r))
                  for m, r in ((m, next(raw)) for m in members)}
        unknown = {item for item in items if not next(raw)}
        return _State(taken, states, unknown, {a: next(raw) for a in anons})

    def _queue_event(self, calls: _Calls, k: Keys, r: _Row, state: _MemberState | None, home: bool,
                     stock: bool) -> None:
        row = r.row
        ts, item, kind = float(row["ts"]), row["item_id"], EventType(row["event_type"])
        member_id = r.member_id
        if home and item and kind is not EventType.RETURN:
            key = k.recent(member_id) if member_id else k.anon_recent(row["anonymous_id"])
            calls.add("push", key, self.config.recent_items, self._ttl, item)
        if kind is EventType.PURCHASE and item:
            if stock:
                store = row["store_id"] if Channel(row["channel"]).is_physical else ONLINE_STORE
                calls.add("stock", k.stock(store), item, -int(row["quantity"]), self.config.feature_ttl_s or 0)
            if home and member_id:
                calls.add("timed", k.purchased(member_id), self.config.purchased_items, self._ttl, item, int(ts))
        if state is None:
            return
        state.touched = True
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

    def _queue_state(self, calls: _Calls, k: Keys, member_id: str, state: _MemberState) -> None:
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
        calls.add("patch", k.member(member_id), *args)

    def _queue_link(self, calls: _Calls, k: Keys, anonymous_id: str, member_id: str, anon_list: bytes | None) -> int:
        """The link, and the anonymous items (as read) credited to the member as their newest (the browsing
        happened right before the login); returns how many."""
        calls.add("link", k.identity(anonymous_id), member_id, int(time.time()), self.config.identity_ttl_s)
        items = packed.unpack(anon_list)
        if items:
            calls.add("push", k.recent(member_id), self.config.recent_items, self._ttl, *reversed(items))
            calls.add("drop", k.anon_recent(anonymous_id), anon_list)
        return len(items)

    def link(self, anonymous_id: str, member_id: str) -> int:
        """Record that `anonymous_id` is `member_id` (a login) and credit its recent items to the member.

        Three round trips: the pointer, the anonymous list, then the script(s). Linking again is harmless (the
        same link, nothing left to credit); a later link of the same id to another member replaces this one.
        Returns how many items were credited.
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.base.pointer(), ["generation", "schema"])
        (raw_pointer,) = self._execute(pipe, "link")
        k = self.base.at(parse_pointer(self.base, raw_pointer))
        with redis_call("link"):
            anon_list = self.client.get(k.anon_recent(anonymous_id))
        calls = _Calls(self.cluster)
        credited = self._queue_link(calls, k, anonymous_id, member_id, anon_list)
        plan = LivePlan((), tuple(ScriptCall((), tuple(w.keys), tuple(w.args)) for w in calls.calls.values()),
                        LiveReport(0, 0, 0, 0, 1, credited))
        return self.commit(plan).credited


@dataclass(frozen=True)
class _State:
    """What `prepare` read in its second round trip."""

    taken: set[str]
    members: dict[str, _MemberState | None]
    unknown_items: set[str]
    anon_lists: dict[str, bytes | None]

    def is_taken(self, claim: str) -> bool:
        return claim in self.taken


_ATTEMPTS = 5
