"""Offer fixtures: the example catalogue, and an engine on the real Redis whose members, items and stock are
materialised into the feature store by the production loader (no test-only writers)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pytest
import redis
import redis.asyncio

from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.readers import RetailData
from omnirec.domain.schema import EVENT_SCHEMA
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.materialize import Materializer, compute_features
from omnirec.feature_store.reader import AsyncFeatureReader
from omnirec.offers.catalogue import CatalogueSource
from omnirec.offers.config import EXAMPLE_CATALOGUE, OfferConfig
from omnirec.offers.decision_log import DecisionLog
from omnirec.offers.engine import OfferEngine
from omnirec.offers.store import OfferStore

T = TypeVar("T")
EXAMPLE = EXAMPLE_CATALOGUE
NOW = 1_795_000_000.0
"""2026-11-18: inside every example offer's validity window."""
DAY = 86_400
ALL = frozenset(Channel)
POINTS = {"basic": 0, "silver": 1_000, "gold": 5_000, "platinum": 20_000}
PURCHASES = {  # days before NOW: (signup, purchases): what makes `domain.lifecycle` give each stage
    LifecycleStage.NEW: (5, ()),
    LifecycleStage.ACTIVE: (400, (10,)),
    LifecycleStage.REACTIVATED: (400, (300, 10)),
    LifecycleStage.AT_RISK: (400, (90,)),
    LifecycleStage.DORMANT: (400, (200,)),
    LifecycleStage.CHURNED: (800, (400,)),
}
ITEMS = pa.table({
    "item_id": ["i1", "i2", "i3", "i4", "i5"],
    "category": ["beauty/skincare", "beauty/makeup", "electronics/audio", "home/kitchen", "apparel/tops"],
    "brand": ["b1", "b1", "b2", "b3", "b4"],
    "price": [20.0, 15.0, 80.0, 30.0, 25.0],
    "price_band": ["mid", "low", "high", "mid", "mid"],
    "attributes": pa.array([[]] * 5, pa.list_(pa.string())),
})
INVENTORY = pa.table({"store_id": ["online"] * 5 + ["s1", "s1"], "item_id": ["i1", "i2", "i3", "i4", "i5", "i4", "i5"],
                      "quantity": pa.array([5, 5, 5, 5, 5, 0, 3], pa.int32())})
"""Everything is in stock online; store s1 has no kitchen item (i4) and carries only i4 and i5."""


@dataclass(frozen=True)
class Member:
    member_id: str
    tier: str = "basic"
    stage: LifecycleStage = LifecycleStage.ACTIVE
    consent: frozenset[Channel] = ALL


def member(member_id: str, tier: str = "basic", stage: LifecycleStage = LifecycleStage.ACTIVE,
           consent: frozenset[Channel] = ALL) -> Member:
    return Member(member_id, tier, stage, consent)


def retail_data(members: list[Member]) -> RetailData:
    """A retailer holding exactly `members` (tier from points, stage from signup and purchases at NOW)."""
    rows = {"member_id": [], "signup_ts": [], "home_store": [], "region": [], "points": [], "tier": [],
            "lifecycle_stage": [], "channel_habit": [], **{f"consent_{c.value}": [] for c in Channel}}
    events: dict[str, list] = {f.name: [] for f in EVENT_SCHEMA}
    for m in members:
        signup, bought = PURCHASES[m.stage]
        for name, value in (("member_id", m.member_id), ("signup_ts", int(NOW) - signup * DAY),
                            ("home_store", "s1"), ("region", "north"), ("points", POINTS[m.tier]), ("tier", m.tier),
                            ("lifecycle_stage", m.stage.value), ("channel_habit", "mixed")):
            rows[name].append(value)
        for c in Channel:
            rows[f"consent_{c.value}"].append(c in m.consent)
        for days in bought:
            for name, value in (("member_id", m.member_id), ("anonymous_id", None), ("item_id", "i5"),
                                ("channel", "app"), ("event_type", "purchase"), ("store_id", None), ("quantity", 1),
                                ("price", 25.0), ("ts", int(NOW) - days * DAY)):
                events[name].append(value)
    return RetailData(
        members=pa.table(rows), items=ITEMS, stores=pa.table({"store_id": ["s1"], "region": ["north"]}),
        inventory=INVENTORY, events=pa.table(events, schema=EVENT_SCHEMA),
        identity_links=pa.table({"anonymous_id": pa.array([], pa.string()), "member_id": pa.array([], pa.string())}))


def materialise(client: redis.Redis, config: RedisConfig, members: list[Member]) -> None:
    features = compute_features(retail_data(members), TierLadder(), LifecycleRules(), NOW)
    Materializer(client, config).load(features)


@pytest.fixture
def catalogue_path(tmp_path: Path) -> Path:
    path = tmp_path / "catalogue.toml"
    shutil.copy(EXAMPLE, path)
    return path


@pytest.fixture
def redis_config(redis_client: redis.Redis, redis_prefix: str) -> RedisConfig:
    kw = redis_client.connection_pool.connection_kwargs
    # the engine's client waits up to 5 s (below); so do its pipelined connections, on a loaded test machine
    return RedisConfig(url=f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}", namespace=redis_prefix,
                       socket_timeout_s=5.0, connect_timeout_s=5.0)


EngineFactory = Callable[..., OfferEngine]


@pytest.fixture
def make_engine(redis_client: redis.Redis, redis_config: RedisConfig, catalogue_path: Path,
                tmp_path: Path) -> EngineFactory:
    """An engine over the real Redis under the test's prefix, with `members` materialised.

    The engine's asyncio client connects on first use, so run all of one engine's calls on one event loop
    (`drive`)."""
    def make(members: list[Member], path: Path = catalogue_path, **config: object) -> OfferEngine:
        materialise(redis_client, redis_config, members)
        cfg = OfferConfig(catalogue_path=path, decision_log_dir=tmp_path / "decisions", **config)  # type: ignore
        client = redis.asyncio.Redis.from_url(redis_config.url, socket_timeout=5)  # type: ignore[arg-type]
        reader = AsyncFeatureReader(client, redis_config, pipeline_every_read=True)  # as `service.wiring` builds it
        return OfferEngine(cfg, CatalogueSource(path, poll_seconds=0.0), reader,
                           OfferStore(client, redis_config), DecisionLog(cfg.decision_log_dir), clock=lambda: NOW,
                           default_budget_s=5.0)
    return make


def drive(engine: OfferEngine, body: Callable[[], Awaitable[T]]) -> T:
    """Run `body` on a fresh event loop, then close the engine's Redis client on that loop."""
    async def main() -> T:
        try:
            return await body()
        finally:
            engine.close()
            await engine.store.client.aclose()

    return asyncio.run(main())
