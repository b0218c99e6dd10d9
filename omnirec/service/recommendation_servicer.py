"""RecommendationService: proto <-> domain only; the decisions live in `service.ranking`."""

from __future__ import annotations

from dataclasses import replace

import grpc

from omnirec.domain.errors import InvalidArgument, Unavailable
from omnirec.domain.vocab import Channel, StoreId
from omnirec.recommendations.ranking import (
    Filters,
    MemberContext,
    Ranked,
    Reason,
    basket,
    overfetch,
    recommend,
    similar,
    stock_reason,
)
from omnirec.service import validation as v
from omnirec.service.features import Features
from omnirec.service.model import ModelHolder, ServingModel
from omnirec.service.registry import ALL_ROLES, ServiceSpec
from omnirec.v1 import common_pb2, recommendation_pb2, recommendation_pb2_grpc

_REASONS: dict[Reason, int] = {r: common_pb2.Reason.Value(f"REASON_{r.name}") for r in Reason}

SERVICE = recommendation_pb2.DESCRIPTOR.services_by_name["RecommendationService"].full_name


def _filters(f: common_pb2.ItemFilter, exclude_purchased: bool = False) -> Filters:
    return Filters(category=f.category, in_stock_only=f.in_stock_only, exclude_purchased=exclude_purchased)


class RecommendationServicer(recommendation_pb2_grpc.RecommendationServiceServicer):
    def __init__(self, models: ModelHolder, features: Features, default_deadline_s: float) -> None:
        self._models = models
        self._features = features
        self._default_deadline_s = default_deadline_s

    async def _finish(self, context: grpc.aio.ServicerContext, model: ServingModel, ranked: Ranked, k: int,
                      channel: Channel, store_id: StoreId | None, filters: Filters,
                      degraded: list[str]) -> tuple[common_pb2.RankedItems, common_pb2.ResponseInfo]:
        """The first k candidates, in stock at the store (physical channels) or online when asked.

        Stock lives in Redis: if it cannot be read in time the list goes out unchecked, flagged degraded.
        """
        if filters.in_stock_only:
            ids = model.bundle.items.to_external(ranked.idx).tolist()
            budget = v.time_budget(context, self._default_deadline_s)
            try:
                stocked = await self._features.in_stock(ids, store_id if channel.is_physical else None, budget)
                ranked = ranked.take(stocked, k, stock_reason(channel))
            except Unavailable as exc:
                degraded.append(f"stock not checked: {exc}")
        ranked = ranked.head(k)
        items = common_pb2.RankedItems(item_ids=model.bundle.items.to_external(ranked.idx).tolist(),
                                       scores=ranked.scores.tolist(), reasons=[_REASONS[r] for r in ranked.reasons])
        info = common_pb2.ResponseInfo(model_version=model.version, degraded=bool(degraded),
                                       degraded_reason="; ".join(degraded),
                                       applied_filters=[_REASONS[r] for r in ranked.applied])
        return items, info

    async def Recommend(self, request: recommendation_pb2.RecommendRequest,
                        context: grpc.aio.ServicerContext) -> recommendation_pb2.RecommendResponse:
        v.one_of(request.member_id, request.anonymous_id, "member_id", "anonymous_id")
        channel = v.channel(request.channel)
        store_id = v.store(request.store_id, channel)
        k = v.k(request.k)
        filters = _filters(request.filter, request.exclude_purchased)
        model = self._models.get()
        degraded: list[str] = []
        known = request.member_id in model.bundle.members
        if known and not filters.exclude_purchased:
            # The model alone answers a member it knows when no purchase filter is asked: skip the round trip.
            member = MemberContext(member_id=request.member_id)
        else:
            try:
                budget = v.time_budget(context, self._default_deadline_s)
                if known:  # the model scores them: only their purchases are needed, not the profile
                    member = await self._features.purchased(request.member_id, budget)
                else:
                    member = await self._features.member(request.member_id or None, request.anonymous_id or None,
                                                         budget)
            except Unavailable as exc:
                degraded.append(f"member features unavailable (purchases not excluded): {exc}")
                member = MemberContext(member_id=request.member_id or None)
                filters = replace(filters, exclude_purchased=False)
        ranked = recommend(model.bundle, model.categories, member, channel, store_id, overfetch(k, filters), filters)
        items, info = await self._finish(context, model, ranked, k, channel, store_id, filters, degraded)
        return recommendation_pb2.RecommendResponse(items=items, info=info, member_id=member.member_id or "")

    async def SimilarItems(self, request: recommendation_pb2.SimilarItemsRequest,
                           context: grpc.aio.ServicerContext) -> recommendation_pb2.SimilarItemsResponse:
        item_id = v.required(request.item_id, "item_id")
        k = v.k(request.k)
        channel = v.channel(request.channel)
        store_id = v.store(request.store_id, channel)
        filters = _filters(request.filter)
        model = self._models.get()
        ranked = similar(model.bundle, model.categories, item_id, overfetch(k, filters), filters)
        items, info = await self._finish(context, model, ranked, k, channel, store_id, filters, [])
        return recommendation_pb2.SimilarItemsResponse(items=items, info=info)

    async def RecommendForBasket(self, request: recommendation_pb2.RecommendForBasketRequest,
                                 context: grpc.aio.ServicerContext) -> recommendation_pb2.RecommendForBasketResponse:
        if not request.basket_item_ids:
            raise InvalidArgument("basket_item_ids", "at least one item is required")
        for i, item_id in enumerate(request.basket_item_ids):
            v.required(item_id, f"basket_item_ids[{i}]")
        channel = v.channel(request.channel)
        store_id = v.store(request.store_id, channel)
        k = v.k(request.k)
        filters = _filters(request.filter)
        model = self._models.get()
        taste = model.bundle.member_scores(request.member_id) if request.member_id else None
        ranked = basket(model.bundle, model.categories, list(request.basket_item_ids), taste,
                        overfetch(k, filters), filters)
        items, info = await self._finish(context, model, ranked, k, channel, store_id, filters, [])
        return recommendation_pb2.RecommendForBasketResponse(items=items, info=info)


def spec(models: ModelHolder, features: Features, default_deadline_s: float) -> ServiceSpec:
    return ServiceSpec.of(recommendation_pb2, "RecommendationService",
                          recommendation_pb2_grpc.add_RecommendationServiceServicer_to_server,
                          RecommendationServicer(models, features, default_deadline_s),
                          {"Recommend": ALL_ROLES, "SimilarItems": ALL_ROLES, "RecommendForBasket": ALL_ROLES})
