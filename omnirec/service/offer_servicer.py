"""OfferService: proto <-> domain only; the decisions live in `offers` (see `offers.engine`).

Calls run on the worker's event loop, bounded by the caller's deadline (or `default_deadline_s`). A
DecideCoupon that times out may still complete in Redis: the client's retry with the same request id
then gets the stored decision, never a second coupon.
"""

from __future__ import annotations

import grpc

from omnirec.offers.catalogue import OfferKind
from omnirec.offers.engine import ISSUED, NO_ELIGIBLE_OFFER, CouponDecision, OfferEngine
from omnirec.offers.policy import Rule
from omnirec.service import metrics
from omnirec.service import validation as v
from omnirec.service.registry import ALL_ROLES, APP_POS_ADMIN, ServiceSpec
from omnirec.v1 import offers_pb2, offers_pb2_grpc

MAX_OFFERS = 20
SERVICE = offers_pb2.DESCRIPTOR.services_by_name["OfferService"].full_name

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
                                           offer_id=d.offer_id, reason=_REASONS[d.reason], detail=d.detail,
                                           score=d.score, replayed=d.replayed)


class OfferServicer(offers_pb2_grpc.OfferServiceServicer):
    def __init__(self, engine: OfferEngine, default_deadline_s: float) -> None:
        self._engine = engine
        self._default_deadline_s = default_deadline_s

    async def NextBestOffer(self, request: offers_pb2.NextBestOfferRequest,
                            context: grpc.aio.ServicerContext) -> offers_pb2.NextBestOfferResponse:
        member_id = v.required(request.member_id, "member_id")
        channel = v.channel(request.channel)
        store_id = v.store(request.store_id, channel)
        k = v.k(request.k, upper=MAX_OFFERS)
        basket = v.id_list(request.basket_item_ids, "basket_item_ids")
        result = await self._engine.next_best_offer(
            member_id, channel, store_id, k, basket, v.text_map(request.context, "context"), request.shown,
            v.time_budget(context, self._default_deadline_s))
        ranking = result.ranking
        return offers_pb2.NextBestOfferResponse(
            decision_id=result.decision_id,
            offers=[offers_pb2.ScoredOffer(offer_id=s.offer.id, kind=_KINDS[s.offer.kind], score=s.score,
                                           propensity=s.propensity, uplift=s.uplift, reasons=list(s.reasons))
                    for s in ranking.chosen],
            excluded=[offers_pb2.ExcludedOffer(offer_id=e.offer_id, rule=e.rule, detail=e.detail)
                      for e in ranking.excluded] if request.explain else [],
            catalogue_version=result.catalogue_version, model_version=result.model_version,
            degraded=result.degraded, degraded_reason=result.degraded_reason)

    async def DecideCoupon(self, request: offers_pb2.DecideCouponRequest,
                           context: grpc.aio.ServicerContext) -> offers_pb2.DecideCouponResponse:
        request_id = v.required(request.request_id, "request_id")
        member_id = v.required(request.member_id, "member_id")
        channel = v.channel(request.channel)
        store_id = v.store(request.store_id, channel)
        basket = v.id_list(request.basket_item_ids, "basket_item_ids")
        basket_value = v.money(request.basket_value_minor_units, "basket_value_minor_units")
        decision = await self._engine.decide_coupon(request_id, member_id, channel, store_id, basket, basket_value,
                                                    v.time_budget(context, self._default_deadline_s))
        if not decision.replayed:
            metrics.coupon_decided(decision.issued, decision.reason)
        return _decision(decision)

    async def RedeemCoupon(self, request: offers_pb2.RedeemCouponRequest,
                           context: grpc.aio.ServicerContext) -> offers_pb2.RedeemCouponResponse:
        coupon_id = v.required(request.coupon_id, "coupon_id")
        member_id = v.required(request.member_id, "member_id")
        order_value = v.money(request.order_value_minor_units, "order_value_minor_units")
        channel = v.channel(request.channel)
        store_id = v.store(request.store_id, channel)
        newly, offer_id = await self._engine.redeem(coupon_id, member_id, order_value, store_id, channel,
                                                    v.time_budget(context, self._default_deadline_s))
        return offers_pb2.RedeemCouponResponse(newly_redeemed=newly, offer_id=offer_id)


def spec(engine: OfferEngine, default_deadline_s: float) -> ServiceSpec:
    return ServiceSpec.of(offers_pb2, "OfferService", offers_pb2_grpc.add_OfferServiceServicer_to_server,
                          OfferServicer(engine, default_deadline_s),
                          {"NextBestOffer": ALL_ROLES, "DecideCoupon": APP_POS_ADMIN, "RedeemCoupon": APP_POS_ADMIN})
