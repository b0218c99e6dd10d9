"""Run the simulation end to end and write its Parquet files."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from omnirec.domain import readers
from omnirec.domain.lifecycle import STAGES, LifecycleRules, lifecycle_stages
from omnirec.domain.schema import EVENT_SCHEMA, MEMBER_SCHEMA
from omnirec.domain.vocab import Channel, EventType
from omnirec.simulator.behaviour import CHANNEL_CODES, DAY, EVENT_CODES, EventBatch, ItemPicker, simulate_batch
from omnirec.simulator.config import SimulationConfig
from omnirec.simulator.coupons import run_campaigns
from omnirec.simulator.world import (
    CHANNEL_HABITS,
    Population,
    make_catalogue,
    make_inventory,
    make_population,
    make_stores,
)

log = logging.getLogger(__name__)
LINKED_SHARE = 0.6
"""Share of anonymous ids whose owner later logs in, so the link becomes known."""


@dataclass
class SimulationSummary:
    out_dir: Path
    members: int
    items: int
    stores: int
    events: int
    seconds: float
    by_event_type: Counter[str] = field(default_factory=Counter)
    by_channel: Counter[str] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)
    stages: Counter[str] = field(default_factory=Counter)
    exposures: int = 0


class MemberLedger:
    """Running per-member totals needed for points, tiers and lifecycle stages."""

    def __init__(self, n: int) -> None:
        self.spend = np.zeros(n)
        self.purchase_member: list[np.ndarray] = []
        self.purchase_ts: list[np.ndarray] = []

    def add(self, cols: dict[str, np.ndarray], since_ts: int) -> None:
        ev = cols["event"]
        known = cols["member"] >= 0
        amount = cols["price"] * cols["qty"] * (cols["ts"] >= since_ts)
        buy = known & (ev == EVENT_CODES.index(EventType.PURCHASE))
        ret = known & (ev == EVENT_CODES.index(EventType.RETURN))
        np.add.at(self.spend, cols["member"][buy], amount[buy])
        np.subtract.at(self.spend, cols["member"][ret], amount[ret])
        self.purchase_member.append(cols["member"][buy])
        self.purchase_ts.append(cols["ts"][buy])

    def last_two_purchases(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        member = np.concatenate(self.purchase_member)
        ts = np.concatenate(self.purchase_ts).astype(np.float64)
        order = np.lexsort((ts, member))
        member, ts = member[order], ts[order]
        last, prev = np.full(n, np.nan), np.full(n, np.nan)
        is_last = np.r_[member[1:] != member[:-1], True] if len(member) else np.zeros(0, bool)
        last[member[is_last]] = ts[is_last]
        idx = np.flatnonzero(is_last) - 1
        has_prev = (idx >= 0) & (member[np.maximum(idx, 0)] == member[is_last])
        prev[member[is_last][has_prev]] = ts[idx[has_prev]]
        return last, prev


def simulate(cfg: SimulationConfig, out_dir: Path, rules: LifecycleRules | None = None,
             progress: bool = True) -> SimulationSummary:
    """Generate a retailer and write `readers.*_FILE` Parquet files into `out_dir`."""
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    cat = make_catalogue(cfg, rng)
    stores = make_stores(cfg, rng)
    pop = make_population(cfg, cat, rng)
    picker = ItemPicker(cat)
    summary = SimulationSummary(out, cfg.n_members, cfg.n_items, stores.num_rows, 0, 0.0)
    ledger = MemberLedger(cfg.n_members)
    anon_ids: list[np.ndarray] = []
    anon_members: list[np.ndarray] = []

    def write(writer: pq.ParquetWriter, batch: EventBatch, prefix: str) -> None:
        cols = batch.arrays()
        table, ids, owners = batch.to_table(cols, pop, cat, stores["store_id"], prefix)
        writer.write_table(table)
        ledger.add(cols, cfg.end_ts - 365 * DAY)
        anon_ids.append(ids)
        anon_members.append(owners)
        summary.events += table.num_rows
        summary.by_event_type.update(Counter(np.asarray(EVENT_CODES)[cols["event"]].tolist()))
        summary.by_channel.update(Counter(np.asarray(CHANNEL_CODES)[cols["channel"]].tolist()))

    with pq.ParquetWriter(out / readers.EVENTS_FILE, EVENT_SCHEMA) as writer:
        starts = range(0, cfg.n_members, cfg.chunk_members)
        for b, lo in enumerate(tqdm(starts, desc="simulate members", unit="batch", disable=not progress)):
            members = np.arange(lo, min(lo + cfg.chunk_members, cfg.n_members))
            write(writer, simulate_batch(cfg, cat, pop, picker, members, rng), f"anon-{b}-")
        ground_truth, exposures, campaign_events = run_campaigns(cfg, cat, pop, picker, rng)
        write(writer, campaign_events, "anon-c-")
    summary.exposures = exposures.num_rows

    ids, owners = np.concatenate(anon_ids), np.concatenate(anon_members)
    linked = rng.random(len(ids)) < LINKED_SHARE
    links = pa.table({"anonymous_id": pa.array(ids[linked], pa.string()),
                      "member_id": pop.member_ids.take(pa.array(owners[linked]))})
    members = member_table(cfg, pop, stores, ledger, rules or LifecycleRules())
    summary.tiers.update(members["tier"].to_pylist())
    summary.stages.update(members["lifecycle_stage"].to_pylist())
    for name, table in [(readers.MEMBERS_FILE, members), (readers.ITEMS_FILE, cat.table),
                        (readers.STORES_FILE, stores), (readers.INVENTORY_FILE, make_inventory(cfg, cat, stores, rng)),
                        (readers.IDENTITY_FILE, links), (readers.EXPOSURES_FILE, exposures),
                        (readers.GROUND_TRUTH_FILE, ground_truth)]:
        pq.write_table(table, out / name)
    summary.seconds = time.perf_counter() - started
    log.info("simulated %d members, %d items, %d events in %.1fs into %s", cfg.n_members, cfg.n_items,
             summary.events, summary.seconds, out)
    return summary


def member_table(cfg: SimulationConfig, pop: Population, stores: pa.Table, ledger: MemberLedger,
                 rules: LifecycleRules) -> pa.Table:
    """Members as the retailer's CRM would export them: tiers follow spend, stages follow behaviour."""
    n = cfg.n_members
    points = np.floor(np.maximum(ledger.spend, 0) * cfg.tiers.points_per_unit).astype(np.int64)
    last, prev = ledger.last_two_purchases(n)
    stage = lifecycle_stages(rules, cfg.end_ts, pop.signup_ts, last, prev)
    tier_names = np.array(cfg.tiers.names)
    habits = np.array(list(CHANNEL_HABITS))
    columns: dict[str, object] = {
        "member_id": pop.member_ids,
        "signup_ts": pop.signup_ts.astype(np.int64),
        "home_store": stores["store_id"].take(pa.array(pop.home_store)),
        "region": stores["region"].take(pa.array(pop.home_store)),
        "points": points,
        "tier": pa.array(tier_names[cfg.tiers.tier_codes(points)]),
        "lifecycle_stage": pa.array(np.array([s.value for s in STAGES])[stage]),
        "channel_habit": pa.array(habits[pop.habit]),
    }
    for i, c in enumerate(Channel):
        columns[f"consent_{c.value}"] = pop.consent[:, i]
    return pa.table(columns, schema=MEMBER_SCHEMA)
