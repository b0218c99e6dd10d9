"""RecommendationService: proto <-> domain only; the decisions live in `recommendations.engine`."""

from __future__ import annotations

import grpc

from omnirec.domain.vocab import Intent
from omnirec.recommendations import engine
from omnirec.recommendations.ranking import Filters, Reason
from omnirec.service import validation as v
from omnirec.service.features import Features
from omnirec.service.model import ModelHolder, ServingModel
from omnirec.service.registry import ALL_ROLES, ServiceSpec
from omnirec.v1 import common_pb2, recommendation_pb2, recommendation_pb2_grpc

_REASONS: dict[Reason, int] = {r: common_pb2.Reason.Value(f"REASON_{r.name}") for r in Reason}

SERVICE = recommendation_pb2.DESCRIPTOR.services_by_name["RecommendationService"].full_name


_Request = (recommendation_pb2.RecommendRequest | recommendation_pb2.SimilarItemsRequest
            | recommendation_pb2.RecommendForBasketRequest)


def _reply(model: ServingModel, answer: engine.Answer) -> tuple[common_pb2.RankedItems, common_pb2.ResponseInfo]:
    ranked = answer.ranked
    items = common_pb2.RankedItems(item_ids=answer.item_ids, scores=ranked.scores.tolist(),
                                   reasons=[_REASONS[r] for r in ranked.reasons])
    info = common_pb2.ResponseInfo(model_version=model.version, degraded=bool(answer.degraded),
                                   degraded_reason="; ".join(answer.degraded),
                                   applied_filters=[_REASONS[r] for r in ranked.applied],
                                   empty_reason=answer.empty_reason)
    return items, info


class RecommendationServicer(recommendation_pb2_grpc.RecommendationServiceServicer):
    def __init__(self, models: ModelHolder, features: Features, default_deadline_s: float) -> None:
        self._models = models
        self._features = features
        self._default_deadline_s = default_deadline_s

    def _budget(self, context: grpc.aio.ServicerContext) -> engine.TimeBudget:
        return lambda: v.time_budget(context, self._default_deadline_s)

    @staticmethod
    def _request(proto: _Request, exclude_purchased: bool = False, intent: Intent = Intent.MIXED) -> engine.Request:
        channel = v.channel(proto.channel)
        return engine.Request(channel, v.store(proto.store_id, channel), v.k(proto.k),
                              Filters(category=v.optional_id(proto.filter.category, "filter.category") or "",
                                      in_stock_only=proto.filter.in_stock_only, exclude_purchased=exclude_purchased),
                              intent)

    async def Recommend(self, request: recommendation_pb2.RecommendRequest,
                        context: grpc.aio.ServicerContext) -> recommendation_pb2.RecommendResponse:
        member_id, anonymous_id = v.one_of(request.member_id, request.anonymous_id, "member_id", "anonymous_id")
        asked = self._request(request, request.exclude_purchased, v.intent(request.intent))
        model = self._models.get()
        answer = await engine.for_member(self._features, model.bundle, model.categories, member_id, anonymous_id,
                                         asked, self._budget(context))
        items, info = _reply(model, answer)
        return recommendation_pb2.RecommendResponse(items=items, info=info, member_id=answer.member_id or "")

    async def SimilarItems(self, request: recommendation_pb2.SimilarItemsRequest,
                           context: grpc.aio.ServicerContext) -> recommendation_pb2.SimilarItemsResponse:
        item_id = v.required(request.item_id, "item_id")
        asked = self._request(request)
        model = self._models.get()
        answer = await engine.similar_to(self._features, model.bundle, model.categories, item_id, asked,
                                         self._budget(context))
        items, info = _reply(model, answer)
        return recommendation_pb2.SimilarItemsResponse(items=items, info=info)

    async def RecommendForBasket(self, request: recommendation_pb2.RecommendForBasketRequest,
                                 context: grpc.aio.ServicerContext) -> recommendation_pb2.RecommendForBasketResponse:
        basket = v.id_list(request.basket_item_ids, "basket_item_ids", min_len=1)
        member_id = v.optional_id(request.member_id, "member_id")
        asked = self._request(request)
        model = self._models.get()
        answer = await engine.for_basket(self._features, model.bundle, model.categories, basket, member_id, asked,
                                         self._budget(context))
        items, info = _reply(model, answer)
        return recommendation_pb2.RecommendForBasketResponse(items=items, info=info)


def spec(models: ModelHolder, features: Features, default_deadline_s: float) -> ServiceSpec:
    return ServiceSpec.of(recommendation_pb2, "RecommendationService",
                          recommendation_pb2_grpc.add_RecommendationServiceServicer_to_server,
                          RecommendationServicer(models, features, default_deadline_s),
                          {"Recommend": ALL_ROLES, "SimilarItems": ALL_ROLES, "RecommendForBasket": ALL_ROLES})
