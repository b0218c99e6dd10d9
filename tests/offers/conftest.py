"""Offer fixtures: the example catalogue, a tiny item catalogue, hand-made members and an engine on real Redis."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
import redis

from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.feature_store.config import RedisConfig
from omnirec.offers.catalogue import CatalogueSource
from omnirec.offers.config import EXAMPLE_CATALOGUE, OfferConfig
from omnirec.offers.decision_log import DecisionLog
from omnirec.offers.engine import ItemCatalogue, OfferEngine
from omnirec.offers.policy import MemberView
from omnirec.offers.store import OfferStore

EXAMPLE = EXAMPLE_CATALOGUE
NOW = 1_795_000_000.0
"""2026-11-18: inside every example offer's validity window."""
ALL = frozenset(Channel)


def member(member_id: str, tier: str = "basic", stage: LifecycleStage = LifecycleStage.ACTIVE,
           consent: frozenset[Channel] = ALL) -> MemberView:
    return MemberView(member_id, tier, stage, consent)


@pytest.fixture
def items() -> ItemCatalogue:
    table = pa.table({
        "item_id": ["i1", "i2", "i3", "i4", "i5"],
        "category": ["beauty/skincare", "beauty/makeup", "electronics/audio", "home/kitchen", "apparel/tops"],
        "brand": ["b1", "b1", "b2", "b3", "b4"],
    })
    inventory = pa.table({"store_id": ["online"] * 5 + ["s1", "s1"], "item_id": ["i1", "i2", "i3", "i4", "i5",
                                                                                "i4", "i5"],
                          "quantity": [5, 5, 5, 5, 5, 0, 3]})
    return ItemCatalogue(table, inventory)


@pytest.fixture
def catalogue_path(tmp_path: Path) -> Path:
    path = tmp_path / "catalogue.toml"
    shutil.copy(EXAMPLE, path)
    return path


EngineFactory = Callable[..., OfferEngine]


@pytest.fixture
def make_engine(redis_client: redis.Redis, redis_prefix: str, catalogue_path: Path, items: ItemCatalogue,
                tmp_path: Path) -> EngineFactory:
    """Engine over the real Redis under the test's prefix; `members` maps ids to views."""
    def make(members: dict[str, MemberView], path: Path = catalogue_path, **config: object) -> OfferEngine:
        cfg = OfferConfig(catalogue_path=path, decision_log_dir=tmp_path / "decisions", **config)  # type: ignore
        store = OfferStore(redis_client, RedisConfig(namespace=redis_prefix))
        return OfferEngine(cfg, CatalogueSource(path, poll_seconds=0.0), store, members.get, items,
                           DecisionLog(cfg.decision_log_dir), clock=lambda: NOW)
    return make
