"""Batch materialisation: features from the offline event log, loaded as a new generation, then switched.

Features are computed column-wise with numpy/Arrow (no per-member Python objects), encoded to the Redis
protocol with Arrow string kernels (`feature_store.resp`) and sent in pipelined batches of
`batch_members` members (three `SET`s of packed values each, `feature_store.packed`; the purchased list
packs each item with its last purchase time; a fourth, the member's precomputed lists, when member state is
in the store: `MemberListSource`). Readers keep
serving the previous generation until
the pointer hash is rewritten in one HSET at the very end; the previous generation then gets a short
EXPIRE so in-flight readers can finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from redis.cluster import RedisCluster
from tqdm import tqdm

from omnirec.bundle.reader import ModelBundle, member_ids
from omnirec.domain.clock import stale_data_warning
from omnirec.domain.derive import codes, last_two
from omnirec.domain.lifecycle import DAY, STAGES, LifecycleRules, lifecycle_stages
from omnirec.domain.member_lists import ListColumns, encode, encode_none
from omnirec.domain.readers import RetailData
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Col, EventType
from omnirec.feature_store import packed, resp
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect
from omnirec.feature_store.errors import redis_unavailable
from omnirec.feature_store.keys import SCHEMA_VERSION, Keys, key_column
from omnirec.feature_store.model import CHANNELS, CONSENT_FIELDS, PROFILE_FIELDS, TS

log = logging.getLogger(__name__)
EVENT_TYPES: tuple[EventType, ...] = tuple(EventType)
STOCK_FIELDS_PER_COMMAND = 1_000


@dataclass(frozen=True)
class Ranked:
    """(owner, item, ts) rows sorted by owner, newest first, one row per distinct item, bounded per owner."""

    owner: np.ndarray
    item: np.ndarray
    ts: np.ndarray

    def rows_of(self, owner: int) -> slice:
        lo, hi = np.searchsorted(self.owner, [owner, owner + 1])
        return slice(int(lo), int(hi))


def newest_distinct(owner: np.ndarray, item: np.ndarray, ts: np.ndarray, limit: int) -> Ranked:
    """Each owner's `limit` most recently touched distinct items, newest first.

    Ties in time go to the larger item index first, which is what `ZREVRANGE` returns for ids whose
    catalogue order is their text order. Two single-key sorts instead of a three-key lexsort (10x faster).
    """
    if len(owner) == 0:
        empty = np.zeros(0, np.int64)
        return Ranked(empty, empty, empty)
    n_items = int(item.max()) + 1
    pair = owner.astype(np.int64) * n_items + item
    order = np.argsort(pair)
    pair = pair[order]
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    newest = np.maximum.reduceat(ts[order].astype(np.int64), starts)
    pair = pair[starts][::-1]
    newest = newest[::-1]
    o, i = pair // n_items, pair % n_items
    order = np.argsort((o << 32) | (int(newest.max()) - newest), kind="stable")
    o, i, t = o[order], i[order], newest[order]
    first = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])
    rank = np.arange(len(o)) - np.repeat(first, np.diff(np.r_[first, len(o)]))
    keep = rank < limit
    return Ranked(o[keep], i[keep], t[keep])


def quintile_ranks(n: int) -> np.ndarray:
    """0-based ranks of the four cut values among `n` sorted values (see `quintile_scores`)."""
    return np.array([-(-(s - 1) * n // 5) - 1 for s in range(2, 6)], np.int64)


def quintile_cuts(value: np.ndarray) -> np.ndarray:
    """The four cut values of `quintile_scores` for `value` (all rows counted)."""
    if len(value) == 0:
        return np.full(4, np.inf)
    return np.sort(value)[quintile_ranks(len(value))]


def quintile_scores(value: np.ndarray, valid: np.ndarray, cuts: np.ndarray | None = None) -> np.ndarray:
    """1..5 by quintile of `value` among `valid` rows (higher value, higher score; ties share a score); 0 else.

    Score = 1 + floor(5 * rank / n), rank = how many valid values are smaller; equivalently 1 + the number
    of `cuts` (order statistics at ranks ceil(k n / 5) - 1, k = 1..4) the value exceeds. The cuts are four
    numbers, so a distributed job computes them once and scores every partition alone."""
    cuts = quintile_cuts(value[valid]) if cuts is None else cuts
    return np.where(valid, 1 + (value[:, None] > cuts[None, :]).sum(1), 0).astype(np.int64)


@dataclass(frozen=True)
class MemberAggregates:
    """What a member's profile is computed from, per member (member-table order), from the event log."""

    last_seen: np.ndarray
    """float unix seconds, NaN: never seen."""
    activity: np.ndarray
    """(members, channels) event counts, in `CHANNELS` order."""
    last_purchase: np.ndarray
    prev_purchase: np.ndarray
    frequency: np.ndarray
    """Purchase events."""
    monetary: np.ndarray
    """Spend (price x quantity) of purchase events."""

    @property
    def bought(self) -> np.ndarray:
        return self.frequency > 0

    def rfm_values(self, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Recency (negated days since the last purchase), frequency and monetary: higher is better."""
        return (-(now - np.nan_to_num(self.last_purchase)) / DAY, self.frequency.astype(np.float64),
                self.monetary.astype(np.float64))

    def quintile_cuts(self, now: float) -> np.ndarray:
        """(3, 4) cuts of recency, frequency and monetary among buyers."""
        return np.stack([quintile_cuts(v[self.bought]) for v in self.rfm_values(now)])


def profile_columns(members: pa.Table, a: MemberAggregates, tiers: TierLadder, rules: LifecycleRules, now: float,
                    cuts: np.ndarray) -> dict[str, pa.Array]:
    """Every profile field but `_ts`, as the exact strings stored, for the rows of `members`; the batch job
    and the Spark job (`feature_store.spark`, one partition at a time with global `cuts`) both use it."""
    signup = members["signup_ts"].to_numpy().astype(np.float64)
    points = members["points"].to_numpy()
    recency, frequency, monetary = a.rfm_values(now)
    profile: dict[str, pa.Array] = {
        "tier": pa.array(np.array(tiers.names)[tiers.tier_codes(points)]),
        "lifecycle_stage": pa.array(np.array([s.value for s in STAGES])[
            lifecycle_stages(rules, now, signup, a.last_purchase, a.prev_purchase)]),
        "recency_score": _text(quintile_scores(recency, a.bought, cuts[0])),
        "frequency_score": _text(quintile_scores(frequency, a.bought, cuts[1])),
        "monetary_score": _text(quintile_scores(monetary, a.bought, cuts[2])),
        "points": _text(points),
        "home_store": _text(members["home_store"]),
        "region": _text(members["region"]),
    }
    for j, c in enumerate(CHANNELS):
        profile[f"act_{c.value}"] = _text(a.activity[:, j])
    for c, field in zip(CHANNELS, CONSENT_FIELDS, strict=True):
        profile[field] = pa.array(np.where(members[f"consent_{c.value}"].to_numpy(zero_copy_only=False), "1", "0"))
    profile |= {"signup_ts": _text(signup.astype(np.int64)), "last_seen_ts": _optional_ts(a.last_seen),
                "last_purchase_ts": _optional_ts(a.last_purchase), "prev_purchase_ts": _optional_ts(a.prev_purchase)}
    return {name: profile[name] for name in PROFILE_FIELDS[:-1]}  # the record's field order; `_ts` is added on write


def _text(values: np.ndarray | pa.Array | pa.ChunkedArray) -> pa.Array:
    arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
    out = pc.cast(arr, pa.string())
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def _optional_ts(ts: np.ndarray) -> pa.Array:
    """Unix seconds as text, "" where NaN (never happened)."""
    missing = np.isnan(ts)
    return pc.fill_null(_text(pa.array(np.nan_to_num(ts).astype(np.int64), mask=missing)), "")


@dataclass(frozen=True)
class BatchFeatures:
    """Everything one materialisation loads, column-wise. Profile values are the exact strings stored."""

    now: float
    member_ids: pa.Array
    profile: dict[str, pa.Array]
    item_ids: pa.Array
    items: dict[str, pa.Array]
    recent: Ranked
    purchased: Ranked
    anon_ids: pa.Array
    anon_recent: Ranked
    stock_store: pa.Array
    stock_item: pa.Array
    stock_qty: pa.Array
    links: pa.Table

    def member_index(self, member_id: str) -> int:
        return int(codes(pa.array([member_id]), self.member_ids)[0])

    def profile_of(self, member_id: str) -> dict[str, str]:
        i = self.member_index(member_id)
        return {f: self.profile[f][i].as_py() for f in self.profile}

    def recent_of(self, member_id: str) -> list[str]:
        rows = self.recent.rows_of(self.member_index(member_id))
        return self.item_ids.take(pa.array(self.recent.item[rows])).to_pylist()

    def purchased_of(self, member_id: str) -> dict[str, int]:
        """Item -> unix seconds of its last purchase, most recent first."""
        rows = self.purchased.rows_of(self.member_index(member_id))
        ids = self.item_ids.take(pa.array(self.purchased.item[rows])).to_pylist()
        return dict(zip(ids, self.purchased.ts[rows].tolist(), strict=True))


def compute_features(data: RetailData, tiers: TierLadder, rules: LifecycleRules, now: float | None = None,
                     recent_items: int = 50, purchased_items: int = 200) -> BatchFeatures:
    """Member, item and stock features from validated retail data (anonymous events already credited).

    `now` defaults to the last event's time, so the same files always give the same features.
    """
    members, ev = data.members, data.events
    n = members.num_rows
    member_ids = members["member_id"].combine_chunks()
    item_ids = data.items["item_id"].combine_chunks()
    m = codes(ev[Col.MEMBER_ID], member_ids)
    item = codes(ev[Col.ITEM_ID], item_ids)
    ch = codes(ev[Col.CHANNEL], pa.array([c.value for c in CHANNELS]))
    et = codes(ev[Col.EVENT_TYPE], pa.array([e.value for e in EVENT_TYPES]))
    ts = ev[Col.TS].to_numpy().astype(np.int64)
    now = float(ts.max()) if now is None and len(ts) else float(now or time.time())
    known = m >= 0
    strangers = int((~known & pc.is_valid(ev[Col.MEMBER_ID]).to_numpy(zero_copy_only=False)).sum())
    if strangers:
        log.warning("materialize: %d events name members missing from the member table; ignored", strangers)

    last_seen = np.full(n, np.nan)
    np.fmax.at(last_seen, m[known], ts[known].astype(np.float64))
    activity = np.bincount(m[known] * len(CHANNELS) + ch[known], minlength=n * len(CHANNELS)).reshape(
        n, len(CHANNELS))

    buy = known & (et == EVENT_TYPES.index(EventType.PURCHASE))
    last, prev = last_two(m[buy], ts[buy].astype(np.float64), n)
    qty = ev[Col.QUANTITY].to_numpy().astype(np.float64)
    price = ev[Col.PRICE].to_numpy()
    aggregates = MemberAggregates(last_seen, activity, last, prev, np.bincount(m[buy], minlength=n),
                                  np.bincount(m[buy], weights=(price * qty)[buy], minlength=n))
    profile = profile_columns(members, aggregates, tiers, rules, now, aggregates.quintile_cuts(now))

    touched = known & (item >= 0) & (et != EVENT_TYPES.index(EventType.RETURN))
    anon = ~known & (item >= 0) & pc.is_valid(ev[Col.ANONYMOUS_ID]).to_numpy(zero_copy_only=False)
    anon_codes = pc.dictionary_encode(ev[Col.ANONYMOUS_ID].filter(pa.array(anon))).combine_chunks()
    return BatchFeatures(
        now=now,
        member_ids=member_ids,
        profile=profile,
        **_catalogue(data.items, data.inventory, data.identity_links),
        recent=newest_distinct(m[touched], item[touched], ts[touched], recent_items),
        purchased=newest_distinct(m[buy], item[buy], ts[buy], purchased_items),
        anon_ids=anon_codes.dictionary,
        anon_recent=newest_distinct(anon_codes.indices.to_numpy().astype(np.int64), item[anon], ts[anon],
                                    recent_items),
    )


def _catalogue(items: pa.Table, inventory: pa.Table, links: pa.Table) -> dict[str, object]:
    return {"item_ids": items["item_id"].combine_chunks(),
            "items": {"price": _text(items["price"]), "category": items["category"].combine_chunks(),
                      "brand": items["brand"].combine_chunks(), "price_band": items["price_band"].combine_chunks()},
            "stock_store": inventory["store_id"].combine_chunks(), "stock_item": inventory["item_id"].combine_chunks(),
            "stock_qty": _text(inventory["quantity"]), "links": links}


def catalogue_features(items: pa.Table, inventory: pa.Table, links: pa.Table, now: float) -> BatchFeatures:
    """Items, stock and identity links alone (no members): what `Materializer.write_catalogue` loads when
    the member features are written by another job (`feature_store.spark`)."""
    empty = pa.array([], pa.string())
    none = Ranked(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return BatchFeatures(now=now, member_ids=empty, profile={}, recent=none, purchased=none, anon_ids=empty,
                         anon_recent=none, **_catalogue(items, inventory, links))  # type: ignore[arg-type]


@dataclass(frozen=True)
class MemberListSource:
    """The published bundle's member-side lists, which a materialisation copies into the store when replicas
    do not hold member state (`service.config.member_state_in_store`)."""

    bundle_version: int
    member_ids: pa.Array
    columns: Callable[[int, int], list[ListColumns]]
    """Lists of members lo..hi-1 (rows of `member_ids`)."""
    path: Path | None = None
    """The bundle folder, from which Spark's executors read the lists themselves (`feature_store.spark`)."""
    depth: int = 0
    """Collaborative items per member."""

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, depth: int) -> MemberListSource:
        """`depth`: collaborative items per member when the bundle has no precomputed lists."""
        return cls(bundle.version, pa.array(member_ids(bundle.path)),
                   lambda lo, hi: bundle.member_list_columns(slice(lo, hi), depth), bundle.path, depth)

    @classmethod
    def from_path(cls, path: Path, depth: int) -> MemberListSource:
        """The bundle at `path`, its member arrays mapped without building an id lookup (tens of millions of
        ids would cost gigabytes)."""
        return cls.from_bundle(ModelBundle.load(path, member_index=False), depth)


@dataclass(frozen=True)
class LoadReport:
    generation: int
    previous_generation: int | None
    members: int
    items: int
    commands: int
    seconds: float
    """From the first write to the pointer switch: what `members_per_s` divides by."""
    old_keys_expired: int
    cleanup_seconds: float
    """Setting the grace TTL on older generations, after readers already moved."""

    @property
    def members_per_s(self) -> float:
        return self.members / self.seconds if self.seconds > 0 else float("inf")


EXPIRE_STEP = 1_000
"""Keys scanned and expired per pipelined step of the post-switch cleanup."""


class Materializer:
    """Loads `BatchFeatures` as a new generation and switches readers to it atomically."""

    def __init__(self, client: redis.Redis | RedisCluster, config: RedisConfig) -> None:
        self.client = client
        self.config = config
        self.keys = Keys(config.namespace)

    def load(self, features: BatchFeatures, progress: bool = False,
             member_lists: MemberListSource | None = None) -> LoadReport:
        """`member_lists`: also write each bundle member's lists (`member_top`), for replicas without member state."""
        with redis_unavailable("materialisation"):
            return self._load(features, progress, member_lists)

    def _load(self, f: BatchFeatures, progress: bool, member_lists: MemberListSource | None) -> LoadReport:
        started = time.perf_counter()
        generation = self.begin()
        k = self.keys.at(generation)
        stamp = str(int(time.time()))
        n = len(f.member_ids)
        step = self.config.batch_members
        ttl = self.config.feature_ttl_s
        with resp.BulkSender(self.client) as sender, tqdm(
                total=n, desc=f"materialise generation {generation}", unit="member", disable=not progress) as bar:
            for lo in range(0, n, step):
                hi = min(lo + step, n)
                keys = key_column(k.member, f.member_ids.slice(lo, hi - lo))
                profiles = pc.binary_join_element_wise(*(col.slice(lo, hi - lo) for col in f.profile.values()),
                                                       stamp, packed.SEP)
                writes = [(keys, resp.set_values(keys, profiles, ttl))]
                writes.append(_packed_lists(f.recent, f.member_ids, f.item_ids, k.recent, lo, hi, ttl))
                writes.append(_packed_lists(f.purchased, f.member_ids, f.item_ids, k.purchased, lo, hi, ttl,
                                            timed=True))
                self._send(sender, writes, None)
                bar.update(hi - lo)
            for lo in range(0, len(f.anon_ids), step):
                self._send(sender, [_packed_lists(f.anon_recent, f.anon_ids, f.item_ids, k.anon_recent, lo,
                                                  lo + step, ttl)], None)
            self.write_catalogue(f, generation, sender, stamp)
            if member_lists is not None:
                self.write_member_lists(member_lists, generation, sender, progress)
                self.write_no_lists(member_lists, f.member_ids, generation, sender)
        return self.finish(generation, n, len(f.item_ids), sender.commands_sent, started)

    def begin(self) -> int:
        """Number the next generation; its keys are invisible to readers until `finish`."""
        return int(self.client.incr(self.keys.generation_counter()))

    def write_catalogue(self, f: BatchFeatures, generation: int, sender: resp.BulkSender, stamp: str) -> None:
        """Items, stock and identity links (what grows with the catalogue and stores, not with members)."""
        self._load_items(f, self.keys.at(generation), sender, stamp)
        self._load_links(f, sender, stamp)

    def write_member_lists(self, source: MemberListSource, generation: int, sender: resp.BulkSender,
                           progress: bool = False) -> None:
        """One `member_top` value per bundle member (`domain.member_lists`), in batches of `batch_members`."""
        k = self.keys.at(generation)
        n = len(source.member_ids)
        step = self.config.batch_members
        with tqdm(total=n, desc=f"member lists of bundle v{source.bundle_version}", unit="member",
                  disable=not progress) as bar:
            for lo in range(0, n, step):
                hi = min(lo + step, n)
                keys = key_column(k.member_top, source.member_ids.slice(lo, hi - lo))
                values = encode(source.bundle_version, source.columns(lo, hi))
                self._send(sender, [(keys, resp.set_values(keys, values, self.config.feature_ttl_s))], None)
                bar.update(hi - lo)

    def write_no_lists(self, source: MemberListSource, profiled: pa.Array, generation: int,
                       sender: resp.BulkSender) -> None:
        """An empty `member_top` (`encode_none`) for each of `profiled` the bundle does not know: with it a
        reader serving member state from the store tells a cold start (empty entry) from a known member whose
        entry is missing (no entry, answered degraded)."""
        k = self.keys.at(generation)
        unknown = profiled.filter(pc.invert(pc.is_in(profiled, value_set=source.member_ids)))
        step = self.config.batch_members
        for lo in range(0, len(unknown), step):
            keys = key_column(k.member_top, unknown.slice(lo, step))
            values = encode_none(source.bundle_version, len(keys))
            self._send(sender, [(keys, resp.set_values(keys, values, self.config.feature_ttl_s))], None)

    def finish(self, generation: int, members: int, items: int, commands: int, started: float) -> LoadReport:
        """Switch readers to `generation` (one HSET), then give older generations the grace TTL."""
        previous = self._switch(generation, members, items)
        loaded = time.perf_counter()
        expired = self.expire_other_generations(generation) if generation > 1 else 0  # first load: nothing older
        report = LoadReport(generation, previous, members, items, commands, loaded - started,
                            expired, time.perf_counter() - loaded)
        log.info("materialised generation %d: %d members, %d items, %d commands in %.2fs (%.0f members/s); "
                 "%d old keys set to expire in %.2fs", generation, members, items, commands, report.seconds,
                 report.members_per_s, expired, report.cleanup_seconds)
        return report

    @staticmethod
    def _send(sender: resp.BulkSender, writes: list[tuple[pa.Array, pa.Array]], ttl_s: int | None) -> None:
        """Send (keys, commands) pairs, each followed by an EXPIRE of its keys when `ttl_s` is set."""
        if ttl_s is not None:
            writes = writes + [(keys, resp.expire(keys, ttl_s)) for keys, _ in writes]
        sender.send(pa.concat_arrays([keys for keys, _ in writes]), [cmds for _, cmds in writes])

    def _load_items(self, f: BatchFeatures, k: Keys, sender: resp.BulkSender, stamp: str) -> None:
        ttl = self.config.feature_ttl_s
        for lo in range(0, len(f.item_ids), self.config.batch_members):
            ids = f.item_ids.slice(lo, self.config.batch_members)
            keys = key_column(k.item, ids)
            fields: dict[str, pa.Array | str] = {name: col.slice(lo, len(ids)) for name, col in f.items.items()}
            self._send(sender, [(keys, resp.hset(keys, fields | {TS: stamp}))], ttl)
        order = np.argsort(f.stock_store.to_numpy(zero_copy_only=False), kind="stable")
        store = f.stock_store.take(pa.array(order))
        starts = resp.split_groups(store.to_numpy(zero_copy_only=False), STOCK_FIELDS_PER_COMMAND)
        keys = key_column(k.stock, store.take(pa.array(starts[:-1])))
        rows = resp.join(resp.bulk(f.stock_item.take(pa.array(order))), resp.bulk(f.stock_qty.take(pa.array(order))))
        self._send(sender, [(keys, resp.grouped("HSET", keys, starts, rows, 2))], ttl)
        for column, key in (("category", k.category_items), ("brand", k.brand_items)):
            groups = pa.table({"group": f.items[column], "item": f.item_ids}).group_by("group").aggregate(
                [("item", "list")])
            keys = key_column(key, groups["group"].combine_chunks())
            lists = pc.binary_join(groups["item_list"].combine_chunks(), packed.SEP)
            self._send(sender, [(keys, resp.set_values(keys, lists, ttl))], None)

    def _load_links(self, f: BatchFeatures, sender: resp.BulkSender, stamp: str) -> None:
        """Batch identity links are durable (they survive re-materialisation), like links made live."""
        for lo in range(0, f.links.num_rows, self.config.batch_members):
            links = f.links.slice(lo, self.config.batch_members)
            keys = key_column(self.keys.identity, links["anonymous_id"].combine_chunks())
            cmds = resp.hset(keys, {"member_id": links["member_id"].combine_chunks(), TS: stamp})
            self._send(sender, [(keys, cmds)], self.config.identity_ttl_s)

    def _switch(self, generation: int, members: int, items: int) -> int | None:
        """Point readers at `generation` in one HSET; returns the generation they were reading."""
        pointer = self.keys.pointer()
        old = self.client.hget(pointer, "generation")
        self.client.hset(pointer, mapping={"generation": generation, "schema": SCHEMA_VERSION, "members": members,
                                           "items": items, TS: int(time.time())})
        return None if old is None else int(old)

    def expire_other_generations(self, current: int) -> int:
        """Give the keys of every generation but `current` (the replaced one, aborted loads) the grace TTL.

        Each primary is scanned for its own keys, which get `EXPIRE key ttl LT` (a TTL is only ever
        shortened) in pipelined steps: plain commands, one key each, so it is the same on a cluster.
        """
        keep = f"{self.keys.at(current).feature_ns}:".encode()
        ttl = self.config.old_generation_ttl_s
        expired = 0
        for node in resp.node_clients(self.client):
            pipe = node.pipeline(transaction=False)
            for key in node.scan_iter(match=self.keys.all_generations_pattern(), count=EXPIRE_STEP):
                if not key.startswith(keep):
                    pipe.expire(key, ttl, lt=True)
                if len(pipe) >= EXPIRE_STEP:
                    expired += sum(pipe.execute())
            expired += sum(pipe.execute())
        return expired


def _packed_lists(ranked: Ranked, owner_ids: pa.Array, item_ids: pa.Array, key: Callable[[str], str], lo: int, hi: int,
                  ttl_s: int | None, timed: bool = False) -> tuple[pa.Array, pa.Array]:
    """SET commands of the packed item lists (newest first) of owners lo..hi-1 that have rows, and their keys;
    `timed` packs each id with its time (id, seconds, id, seconds, ...: the purchased list)."""
    a, b = np.searchsorted(ranked.owner, [lo, hi])
    owner = ranked.owner[a:b]
    starts = resp.split_groups(owner, 10**9)
    keys = key_column(key, owner_ids.take(pa.array(owner[starts[:-1]])))
    values = item_ids.take(pa.array(ranked.item[a:b]))
    if timed:  # interleave: ids at even positions, their times at odd ones
        n = len(values)
        both = pa.concat_arrays([values.cast(pa.string()), _text(ranked.ts[a:b])])
        values = both.take(pa.array(np.stack([np.arange(n), np.arange(n) + n], 1).ravel()))
        starts = starts * 2
    lists = pa.ListArray.from_arrays(pa.array(starts, pa.int32()), values)
    return keys, resp.set_values(keys, pc.binary_join(lists, packed.SEP), ttl_s)


@dataclass(frozen=True)
class MaterializeSummary:
    load: LoadReport
    read_seconds: float
    compute_seconds: float

    @property
    def end_to_end_members_per_s(self) -> float:
        return self.load.members / (self.read_seconds + self.compute_seconds + self.load.seconds)


def materialize(data_dir: Path, config: RedisConfig, tiers: TierLadder, rules: LifecycleRules,
                now: float | None = None, progress: bool = False,
                member_lists: MemberListSource | None = None) -> MaterializeSummary:
    """Read the retail files in `data_dir`, compute features at `now` (as_of; default the newest event)
    and load them as a new generation. Events after `now` are left out; a stale history is logged.
    `member_lists`: the bundle's member lists to store too (member state in the store)."""
    started = time.perf_counter()
    data = RetailData.read(data_dir)
    if now is not None:
        data = data.until(now)
        stale_data_warning(float(pc.max(data.events[Col.TS]).as_py() or 0), now, "materialize")
    read = time.perf_counter()
    features = compute_features(data, tiers, rules, now, config.recent_items, config.purchased_items)
    computed = time.perf_counter()
    client = connect(config, socket_timeout_s=config.bulk_timeout_s)
    try:
        report = Materializer(client, config).load(features, progress=progress, member_lists=member_lists)
    finally:
        client.close()
    return MaterializeSummary(report, read - started, computed - read)
