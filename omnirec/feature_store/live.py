"""Live updates from behaviour events, with the same tier and lifecycle rules as the batch job.

`LiveUpdater.apply` costs three round trips per event batch, whatever its size:

1. the pointer, a dedup claim per event (`SET seen:{digest} 1 NX EX dedup_ttl_s`) and the identity link of
   every anonymous id;
2. the stored state of the members involved (signup, purchase times, points, tier);
3. every write, each with its EXPIRE, in one non-transactional pipeline.

Dedup claims are taken before writing, so a retried batch is never double-counted even when retries
race. If Redis fails between claim and write, those events are missing from the live store until the
next materialisation, which recomputes everything from the event log.

Member records and item lists are packed values (`feature_store.packed`), edited in place by Lua
scripts: activity counters are added atomically; stage, tier and timestamps are computed in Python from
the state read in step 2, so two concurrent batches for the same member may interleave: the later write
wins until the next event or materialisation. Lists (recent, purchased) stay distinct, newest first and
bounded. Returns do not lower points or tiers live: downgrades wait for the batch job.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import redis
from redis.cluster import RedisCluster

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


def _fmt_ts(ts: float | None) -> str:
    return "" if ts is None else str(int(ts))


class LiveUpdater:
    """Applies behaviour events to the current generation, and identity links to the durable map."""

    def __init__(self, client: redis.Redis | RedisCluster, config: RedisConfig, tiers: TierLadder,
                 rules: LifecycleRules, points_per_unit: float = 5.0, dedup: bool = True) -> None:
        self.client = client
        self.config = config
        self.tiers = tiers
        self.rules = rules
        self.points_per_unit = points_per_unit
        """Loyalty points per currency unit spent, as the retailer's CRM awards them."""
        self.dedup = dedup
        self.base = Keys(config.namespace)

    def _execute(self, pipe: Any, what: str) -> list[Any]:
        with redis_call(what):
            return pipe.execute()  # type: ignore[no-any-return]

    def apply(self, events: pa.Table) -> LiveReport:
        """Apply a batch of event rows (`domain.schema.EVENT_SCHEMA`; validated here)."""
        rows = sorted(check_events(events, "<live events>").to_pylist(), key=lambda r: r["ts"])
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.base.pointer(), ["generation", "schema"])
        for row in rows:
            if self.dedup:
                pipe.set(self.base.seen(event_digest(*row.values())), 1, nx=True, ex=self.config.dedup_ttl_s)
        anons = sorted({r["anonymous_id"] for r in rows if r["anonymous_id"]})
        for anon in anons:
            pipe.hget(self.base.identity(anon), "member_id")
        replies = self._execute(pipe, "live claims")
        k = self.base.at(parse_pointer(self.base, replies[0]))
        fresh = replies[1:1 + len(rows)] if self.dedup else [True] * len(rows)
        links = {a: (v.decode() if v else None) for a, v in zip(anons, replies[1 + len(rows) * self.dedup:],
                                                                strict=True)}
        todo = [r for r, ok in zip(rows, fresh, strict=True) if ok]

        new_links = {r["anonymous_id"]: r["member_id"] for r in todo
                     if r["member_id"] and r["anonymous_id"] and links.get(r["anonymous_id"]) != r["member_id"]}
        for r in todo:
            r["member_id"] = r["member_id"] or links.get(r["anonymous_id"] or "")
        members = sorted({r["member_id"] for r in todo if r["member_id"]})
        states = self._read_states(k, members)

        pipe = self.client.pipeline(transaction=False)
        for r in todo:
            self._queue_event(pipe, k, r, states.get(r["member_id"]) if r["member_id"] else None)
        for member_id, state in states.items():
            if state is not None:
                self._queue_state(pipe, k, member_id, state)
        if len(pipe):
            self._execute(pipe, "live writes")
        for anon, member_id in new_links.items():
            self.link(anon, member_id)
        return LiveReport(len(rows), len(todo), len(rows) - len(todo),
                          sum(1 for s in states.values() if s is not None), len(new_links))

    def _read_states(self, k: Keys, members: list[str]) -> dict[str, _MemberState | None]:
        if not members:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for m in members:
            pipe.get(k.member(m))
        raw = self._execute(pipe, "live state")
        return {m: None if r is None else _MemberState.of(MemberProfile.from_packed(m, k.member(m), r))
                for m, r in zip(members, raw, strict=True)}

    def _queue_event(self, pipe: Any, k: Keys, row: dict[str, Any], state: _MemberState | None) -> None:
        ts, item, kind = float(row["ts"]), row["item_id"], EventType(row["event_type"])
        member_id = row["member_id"]
        if item and kind is not EventType.RETURN:
            key = k.recent(member_id) if member_id else k.anon_recent(row["anonymous_id"])
            self._push(pipe, key, [item], self.config.recent_items)
        if kind is EventType.PURCHASE and item:
            channel = Channel(row["channel"])
            store = row["store_id"] if channel.is_physical else ONLINE_STORE
            pipe.hincrby(k.stock(store), item, -int(row["quantity"]))
            if self.config.feature_ttl_s is not None:
                pipe.expire(k.stock(store), self.config.feature_ttl_s)
            if member_id:
                self._push(pipe, k.purchased(member_id), [item], self.config.purchased_items)
        if state is None:
            return
        state.last_seen_ts = max(state.last_seen_ts or ts, ts)
        state.activity[row["channel"]] += 1
        if kind is EventType.PURCHASE and (state.last_purchase_ts is None or ts > state.last_purchase_ts):
            state.prev_purchase_ts, state.last_purchase_ts = state.last_purchase_ts, ts
        if kind is EventType.PURCHASE:
            state.points += math.floor(row["price"] * row["quantity"] * self.points_per_unit)
            state.tier = self.tiers.upgraded(state.tier, state.points)

    @property
    def _ttl(self) -> int:
        """Feature keys expire with their generation (0: keep the key's TTL), or after `feature_ttl_s`."""
        return self.config.feature_ttl_s or 0

    def _push(self, pipe: Any, key: str, items_oldest_first: list[str], limit: int) -> None:
        """Make `items` the newest entries of a distinct, bounded, newest-first list."""
        pipe.eval(packed.PUSH_DISTINCT, 1, key, limit, self._ttl, *items_oldest_first)

    def _queue_state(self, pipe: Any, k: Keys, member_id: str, state: _MemberState) -> None:
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
        pipe.eval(packed.PATCH_RECORD, 1, k.member(member_id), *args)

    def link(self, anonymous_id: str, member_id: str) -> int:
        """Record that `anonymous_id` is `member_id` (a login) and credit its recent items to the member.

        Three round trips: the pointer, the anonymous list, then the link and the merged list. The anonymous
        items become the member's newest (the browsing happened right before the login). A later link of
        the same id to another member replaces this one. Returns how many items were credited.
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.base.pointer(), ["generation", "schema"])
        (raw_pointer,) = self._execute(pipe, "link")
        k = self.base.at(parse_pointer(self.base, raw_pointer))
        pipe = self.client.pipeline(transaction=False)
        pipe.get(k.anon_recent(anonymous_id))
        (raw_items,) = self._execute(pipe, "link")
        items = packed.unpack(raw_items)
        pipe = self.client.pipeline(transaction=False)
        identity = k.identity(anonymous_id)
        pipe.hset(identity, mapping={"member_id": member_id, TS: int(time.time())})
        pipe.expire(identity, self.config.identity_ttl_s)
        if items:
            self._push(pipe, k.recent(member_id), items[::-1], self.config.recent_items)
            pipe.delete(k.anon_recent(anonymous_id))
        self._execute(pipe, "link")
        return len(items)
