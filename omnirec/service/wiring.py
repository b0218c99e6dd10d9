"""Composition of one worker process: its Redis clients, the feature store's reader and live updater, the
offers engine; and of the campaign (audience) jobs, in the audience process and the campaign CLI. Built
once per process (after the fork), so servicers only translate protos.

One client pair per worker: an asyncio client for every request-time read and for offer decisions (on the
worker's event loop), and a synchronous one for live event writes (on worker threads).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from omnirec.audience import AudienceBuilder, AudienceSources, Campaigns
from omnirec.audience.ledger import ledger_reader
from omnirec.config import OmnirecConfig
from omnirec.domain.clock import clock_at
from omnirec.domain.errors import FailedPrecondition
from omnirec.domain.readers import LIVE_EVENTS_DIR
from omnirec.feature_store.connection import connect, connect_async
from omnirec.feature_store.live import LiveUpdater
from omnirec.feature_store.reader import AsyncFeatureReader, FeatureReader
from omnirec.offers.catalogue import CatalogueSource, Target
from omnirec.offers.decision_log import DecisionLog
from omnirec.offers.engine import AffinityModel, OfferEngine, selection
from omnirec.offers.store import OfferStore
from omnirec.offers.uplift import UpliftScores
from omnirec.service.bundles import factor_model
from omnirec.service.features import Features
from omnirec.service.ingest import Ingest
from omnirec.service.model import ModelHolder


@dataclass(frozen=True)
class Wiring:
    features: Features
    """Recommendation reads; closing it closes the worker's Redis clients."""
    ingest: Ingest
    """Accepted events and links: the event log and the live feature-store updates (the sync client)."""
    offers: OfferEngine


def build(config: OmnirecConfig, models: ModelHolder) -> Wiring:
    """Connects lazily: a Redis that is down at start-up only makes answers degraded or UNAVAILABLE."""
    client = connect(config.redis)
    async_client = connect_async(config.redis)
    features = Features(client, async_client, config.redis)
    svc = config.service
    ingest = Ingest(LiveUpdater(client, config.redis, config.tiers, config.lifecycle),
                    svc.event_log_dir or config.data_dir / LIVE_EVENTS_DIR, svc.event_log_flush_rows,
                    svc.event_log_fsync)
    return Wiring(features, ingest, _offers(config, models, client, async_client))


def _offers(config: OmnirecConfig, models: ModelHolder, client: redis.Redis | RedisCluster,
            async_client: redis.asyncio.Redis | AsyncRedisCluster) -> OfferEngine:
    cfg = config.offers

    def model() -> tuple[AffinityModel | None, str]:
        current = models.current
        return (current.bundle, current.version) if current is not None else (None, "")

    return OfferEngine(
        cfg, CatalogueSource(cfg.catalogue_path, config.tiers, cfg.catalogue_poll_s),
        AsyncFeatureReader(async_client, config.redis, pipeline_every_read=True),
        OfferStore(async_client, config.redis, cfg.idempotency_days, sync_client=client,
                   reservation_s=cfg.reservation_s),
        DecisionLog(cfg.decision_log_dir), config.tiers, config.lifecycle, model,
        UpliftScores.load(cfg.uplift_path) if cfg.uplift_path else None, clock=clock_at(config.as_of),
        default_budget_s=config.service.default_deadline_s)


def campaign_jobs(config: OmnirecConfig, models: ModelHolder) -> Campaigns:
    """The campaign jobs of the audience process and the CLI: the offers engine's catalogue, store, log and
    uplift scores, the serving bundle, and the feature store (profiles; offer targets' items, as the engine
    resolves them), on a synchronous client (pulls run on threads) with the bulk timeout: a round trip of
    4,096 profiles is batch work, not a request that should fail fast."""
    client = connect(config.redis, socket_timeout_s=config.redis.bulk_timeout_s)
    engine = _offers(config, models, client, connect_async(config.redis))
    reader = FeatureReader(client, config.redis)
    ledger = ledger_reader(engine.store)

    def target_items(target: Target) -> tuple[str, ...]:
        return reader.selection_items([selection(target)])[1][0]

    def sources() -> AudienceSources:
        current = models.current
        model = None if current is None else factor_model(current.bundle, current.version)
        if current is not None and model is None:
            raise FailedPrecondition(f"bundle {current.version} serves member state from the feature store "
                                     "(`[service] member_state_in_store_above`): build audiences of this size with "
                                     "`omnirec audience --engine spark`")
        return AudienceSources(
            model=model,
            uplift=engine.uplift, catalogue=engine.catalogue.current(), target_items=target_items,
            profiles=reader.profiles, marketing=engine.store.marketing_states,
            profile_columns=reader.profile_columns, ledger=ledger)

    builder = AudienceBuilder(config.tiers, config.lifecycle, config.offers.fatigue,
                              chunk=config.service.audience_chunk_members)
    return Campaigns(builder, sources, engine.store, engine.log)
