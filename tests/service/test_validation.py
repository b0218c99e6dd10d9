"""One validation layer: the same rules for every RPC, errors naming the field in the documented form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from service_harness import API_KEYS, RunningServer

from omnirec.v1 import (
    audience_pb2,
    audience_pb2_grpc,
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    offers_pb2,
    offers_pb2_grpc,
)
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc

APP, POS = common_pb2.CHANNEL_APP, common_pb2.CHANNEL_POS
BAD_IDS = ["a\nb", "a\x00", "\x7f", "x" * 129]


def _requests() -> list[tuple[str, str, Callable[[str], Any], str]]:
    """(service, method, request with `bad` in one id field, the field the error must name)."""
    event = {"event_id": "e1", "member_id": "m1", "item_id": "i1", "channel": APP,
             "event_type": events_pb2.EVENT_TYPE_VIEW}
    return [
        ("rec", "Recommend", lambda bad: rec.RecommendRequest(member_id=bad, channel=APP, k=3), "member_id"),
        ("rec", "Recommend", lambda bad: rec.RecommendRequest(anonymous_id=bad, channel=APP, k=3), "anonymous_id"),
        ("rec", "Recommend", lambda bad: rec.RecommendRequest(member_id="m", channel=POS, store_id=bad, k=3),
         "store_id"),
        ("rec", "Recommend", lambda bad: rec.RecommendRequest(member_id="m", channel=APP, k=3,
                                                              filter=common_pb2.ItemFilter(category=bad)),
         "filter.category"),
        ("rec", "SimilarItems", lambda bad: rec.SimilarItemsRequest(item_id=bad, channel=APP, k=3), "item_id"),
        ("rec", "RecommendForBasket", lambda bad: rec.RecommendForBasketRequest(
            basket_item_ids=["i1", bad], channel=APP, k=3), "basket_item_ids[1]"),
        ("rec", "RecommendForBasket", lambda bad: rec.RecommendForBasketRequest(
            basket_item_ids=["i1"], member_id=bad, channel=APP, k=3), "member_id"),
        ("events", "TrackEvents", lambda bad: events_pb2.TrackEventsRequest(events=[
            events_pb2.Event(**event), events_pb2.Event(**{**event, "event_id": bad})]), "events[1].event_id"),
        ("events", "TrackEvents", lambda bad: events_pb2.TrackEventsRequest(events=[
            events_pb2.Event(**{**event, "anonymous_id": bad})]), "events[0].anonymous_id"),
        ("events", "TrackEvents", lambda bad: events_pb2.TrackEventsRequest(events=[
            events_pb2.Event(**{**event, "item_id": bad})]), "events[0].item_id"),
        ("events", "LinkIdentity", lambda bad: events_pb2.LinkIdentityRequest(anonymous_id=bad, member_id="m"),
         "anonymous_id"),
        ("events", "LinkIdentity", lambda bad: events_pb2.LinkIdentityRequest(anonymous_id="a", member_id=bad),
         "member_id"),
        ("offers", "NextBestOffer", lambda bad: offers_pb2.NextBestOfferRequest(member_id=bad, channel=APP, k=2),
         "member_id"),
        ("offers", "NextBestOffer", lambda bad: offers_pb2.NextBestOfferRequest(
            member_id="m", channel=APP, k=2, basket_item_ids=[bad]), "basket_item_ids[0]"),
        ("offers", "DecideCoupon", lambda bad: offers_pb2.DecideCouponRequest(
            request_id=bad, member_id="m", channel=APP), "request_id"),
        ("offers", "DecideCoupon", lambda bad: offers_pb2.DecideCouponRequest(
            request_id="r", member_id="m", channel=APP, basket_item_ids=["i", bad]), "basket_item_ids[1]"),
        ("offers", "RedeemCoupon", lambda bad: offers_pb2.RedeemCouponRequest(
            coupon_id=bad, member_id="m", channel=APP), "coupon_id"),
        ("offers", "RedeemCoupon", lambda bad: offers_pb2.RedeemCouponRequest(
            coupon_id="c", member_id="m", channel=POS, store_id=bad), "store_id"),
        ("audience", "ConfirmSend", lambda bad: audience_pb2.ConfirmSendRequest(
            send_id="s", channel=APP, member_ids=["m", bad]), "member_ids[1]"),
    ]


def _stub(server: RunningServer, service: str) -> Any:
    return {"rec": rec_grpc.RecommendationServiceStub, "events": events_pb2_grpc.EventServiceStub,
            "offers": offers_pb2_grpc.OfferServiceStub,
            "audience": audience_pb2_grpc.AudienceServiceStub}[service](server.channel)


def _invalid(server: RunningServer, service: str, method: str, request: Any, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(_stub(server, service), method)(request, metadata=(("x-api-key", API_KEYS["admin"]),), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, field, err.value.details())
    assert err.value.details().startswith(f"{field}:"), (method, err.value.details())


def test_every_id_field_refuses_control_characters_and_overlong_ids(server: RunningServer) -> None:
    for service, method, build, field in _requests():
        for bad in BAD_IDS:
            _invalid(server, service, method, build(bad), field)


@pytest.mark.parametrize(("request_", "field"), [
    (offers_pb2.RedeemCouponRequest(coupon_id="c", member_id="m"), "channel"),
    (offers_pb2.RedeemCouponRequest(coupon_id="c", member_id="m", channel=POS), "store_id"),
    (offers_pb2.RedeemCouponRequest(coupon_id="c", member_id="m", channel=APP, order_value_minor_units=-1),
     "order_value_minor_units"),
    (offers_pb2.RedeemCouponRequest(coupon_id="c", member_id="m", channel=APP, order_value_minor_units=2**63 - 1),
     "order_value_minor_units"),
])
def test_redeem_coupon_follows_the_same_channel_and_store_rules(server: RunningServer, request_: Any,
                                                                field: str) -> None:
    _invalid(server, "offers", "RedeemCoupon", request_, field)


def test_context_and_lists_are_bounded(server: RunningServer) -> None:
    _invalid(server, "offers", "NextBestOffer", offers_pb2.NextBestOfferRequest(
        member_id="m", channel=APP, k=2, context={"page": "a\x01"}), "context['page']")
    _invalid(server, "offers", "DecideCoupon", offers_pb2.DecideCouponRequest(
        request_id="r", member_id="m", channel=APP, basket_item_ids=[f"i{i}" for i in range(201)]), "basket_item_ids")
