"""OfferService: proto <-> domain only; the decisions live in `offers` (see `offers.engine`).

The engine is synchronous (Redis scripts and pipelines), so each call runs on a worker thread, bounded
by the caller's deadline. A DecideCoupon that times out may still complete: the client's retry with the
same request id then gets the stored decision, never a second coupon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pyarrow as pa
import pyarrow.parquet as pq

from omnirec.config import OmnirecConfig
from omnirec.domain.clock import clock_at
from omnirec.domain.errors import Unavailable
from omnirec.domain.readers import INVENTORY_FILE, ITEMS_FILE
from omnirec.feature_store.connection import connect
from omnirec.feature_store.reader import FeatureReader
from omnirec.offers.catalogue import CatalogueSource, OfferKind
from omnirec.offers.decision_log import DecisionLog
from omnirec.offers.engine import ISSUED, NO_ELIGIBLE_OFFER, AffinityModel, CouponDecision, ItemCatalogue, OfferEngine
from omnirec.offers.policy import MemberView, Rule
from omnirec.offers.store import OfferStore
from omnirec.offers.uplift import UpliftScores
from omnirec.service import validation as v
from omnirec.service.model import ModelHolder
from omnirec.service.registry import ALL_ROLES, APP_POS_ADMIN, ServiceSpec
from omnirec.v1 import offers_pb2, offers_pb2_grpc

T = TypeVar("T")
log = logging.getLogger(__name__)
EMPTY_ITEMS = pa.table({"item_id": pa.array([], pa.string()), "category": pa.array([], pa.string()),
                        "brand": pa.array([], pa.string())})
MAX_OFFERS = 20

_KINDS = {k: offers_pb2.OfferKind.Value(f"OFFER_KIND_{k.name}") for k in OfferKind}
_REASONS = {
    ISSUED: offers_pb2.COUPON_REASON_ISSUED,
    Rule.HOLDOUT: offers_pb2.COUPON_REASON_HOLDOUT,
    Rule.CAP_REACHED: offers_pb2.COUPON_REASON_CAP_REACHED,
    Rule.FATIGUE_CAP: offers_pb2.COUPON_REASON_CAP_REACHED,
    Rule.BUDGET_EXHAUSTED: offers_pb2.COUPON_REASON_BUDGET_EXHAUSTED,
    Rule.NOT_ELIGIBLE_TIER: offers_pb2.COUPON_REASON_NOT_ELIGIBLE_TIER,
    Rule.NOT_ELIGIBLE_LIFECYCLE: offers_pb2.COUPON_REASON_NOT_ELIGIBLE_LIFECYCLE,
    Rule.NO_CONSENT: offers_pb2.COUPON_REASON_NO_CONSENT,
    Rule.NOT_WORTH_IT: offers_pb2.COUPON_REASON_NOT_WORTH_IT,
    NO_ELIGIBLE_OFFER: offers_pb2.COUPON_REASON_NO_ELIGIBLE_OFFER,
}


def _decision(d: CouponDecision) -> offers_pb2.DecideCouponResponse:
    return offers_pb2.DecideCouponResponse(decision_id=d.decision_id, issued=d.issued, coupon_id=d.coupon_id,
                                     offer_id=d.offer_id, reason=_REASONS[d.reason], detail=d.detail, score=d.score,
                                     replayed=d.replayed)


class OfferServicer(offers_pb2_grpc.OfferServiceServicer):
    def __init__(self, engine: OfferEngine, default_deadline_s: float) -> None:
        self._engine = engine
        self._default_deadline_s = default_deadline_s

    async def _run(self, context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: object) -> T:
        budget = v.time_budget(context, self._default_deadline_s)
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), budget)
        except TimeoutError:
            raise Unavailable(f"offer decision did not finish within {budget * 1000:.0f} ms") from None

    async def NextBestOffer(self, request: offers_pb2.NextBestOfferRequest,
                            context: grpc.aio.ServicerContext) -> offers_pb2.NextBestOfferResponse:
        member_id = v.required(request.member_id, "member_id")
        channel = v.channel(request.channel)
        store_id = v.store(request.store_id, channel)
        k = v.k(request.k, upper=MAX_OFFERS)
        result = await self._run(context, self._engine.next_best_offer, member_id, channel, store_id, k,
                                 list(request.basket_item_ids), dict(request.context))
        ranking = result.ranking
        return offers_pb2.NextBestOfferResponse(
            decision_id=result.decision_id,
            offers=[offers_pb2.ScoredOffer(offer_id=s.offer.id, kind=_KINDS[s.offer.kind], score=s.score,
                                           propensity=s.propensity, uplift=s.uplift, reasons=list(s.reasons))
                    for s in ranking.chosen],
            excluded=[offers_pb2.ExcludedOffer(offer_id=e.offer_id, rule=e.rule, detail=e.detail)
                      for e in ranking.excluded] if request.explain else [],
            catalogue_version=result.catalogue_version, model_version=result.model_version,
            degraded=result.degraded)

    async def DecideCoupon(self, request: offers_pb2.DecideCouponRequest,
                           context: grpc.aio.ServicerContext) -> offers_pb2.DecideCouponResponse:
        request_id = v.required(request.request_id, "request_id")
        member_id = v.required(request.member_id, "member_id")
        channel = v.channel(request.channel)
        store_id = v.store(request.store_id, channel)
        basket_value = v.money(request.basket_value_minor_units, "basket_value_minor_units")
        decision = await self._run(context, self._engine.decide_coupon, request_id, member_id, channel, store_id,
                                   list(request.basket_item_ids), basket_value)
        return _decision(decision)

    async def RedeemCoupon(self, request: offers_pb2.RedeemCouponRequest,
                           context: grpc.aio.ServicerContext) -> offers_pb2.RedeemCouponResponse:
        coupon_id = v.required(request.coupon_id, "coupon_id")
        member_id = v.required(request.member_id, "member_id")
        order_value = v.money(request.order_value_minor_units, "order_value_minor_units")
        channel = v.channel(request.channel) if request.channel else None
        newly, offer_id = await self._run(context, self._engine.redeem, coupon_id, member_id, order_value,
                                          request.store_id or None, channel)
        return offers_pb2.RedeemCouponResponse(newly_redeemed=newly, offer_id=offer_id)


def build_engine(config: OmnirecConfig, models: ModelHolder) -> OfferEngine:
    """The engine of one worker: its own Redis client, member profiles from the feature store, the serving model."""
    client = connect(config.redis)
    reader = FeatureReader(client, config.redis)
    cfg = config.offers
    clock = clock_at(config.as_of)

    def profile(member_id: str) -> MemberView | None:
        features = reader.read_request(member_id)
        p = features.profile
        if p is None:
            return None
        return MemberView(member_id, p.tier, p.stage_at(config.lifecycle, clock()),
                          frozenset(c for c, ok in p.consent.items() if ok), f"generation-{features.generation}")

    def model() -> tuple[AffinityModel | None, str]:
        current = models.current
        return (current.bundle, current.version) if current is not None else (None, "")

    return OfferEngine(cfg, CatalogueSource(cfg.catalogue_path, config.tiers, cfg.catalogue_poll_s),
                       OfferStore(client, config.redis, cfg.idempotency_days), profile,
                       _items(config.data_dir), DecisionLog(cfg.decision_log_dir), config.tiers, model,
                       UpliftScores.load(cfg.uplift_path) if cfg.uplift_path else None, clock=clock)


def _items(data_dir: Path) -> ItemCatalogue:
    """Offer targets resolve against the item table; stock comes from the inventory snapshot beside it.

    Without an item table (a fresh deployment) targets match no items: nothing is filtered for stock and
    every affinity is neutral, which the log says once.
    """
    items, inventory = data_dir / ITEMS_FILE, data_dir / INVENTORY_FILE
    if not items.exists():
        log.warning("offers: %s not found; offer targets cannot be matched to items", items)
        return ItemCatalogue(EMPTY_ITEMS)
    return ItemCatalogue(pq.read_table(items), pq.read_table(inventory) if inventory.exists() else None)


def spec(engine: OfferEngine, default_deadline_s: float) -> ServiceSpec:
    return ServiceSpec.of(offers_pb2, "OfferService", offers_pb2_grpc.add_OfferServiceServicer_to_server,
                          OfferServicer(engine, default_deadline_s),
                          {"NextBestOffer": ALL_ROLES, "DecideCoupon": APP_POS_ADMIN, "RedeemCoupon": APP_POS_ADMIN})
