"""Each RPC against a real server on a free port, a real client and the real Redis."""

from __future__ import annotations

import grpc
import pytest
from service_harness import API_KEYS, RunningServer

from omnirec.v1 import admin_pb2, admin_pb2_grpc, common_pb2, events_pb2, events_pb2_grpc
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc


def _md(role: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", API_KEYS[role]),)


def _code(fn, request, role: str = "app") -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        fn(request, metadata=_md(role), timeout=5)
    return err.value


def test_recommend_known_member(server: RunningServer, known_member: str) -> None:
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    reply = stub.Recommend(rec.RecommendRequest(member_id=known_member, channel=common_pb2.CHANNEL_APP, k=10),
                           metadata=_md("app"), timeout=5)
    assert len(reply.items.item_ids) == 10 and len(set(reply.items.item_ids)) == 10
    assert set(reply.items.reasons) == {common_pb2.REASON_NEXT_BASKET}  # the ranker's MIXED list in the bundle
    assert list(reply.items.scores) == sorted(reply.items.scores, reverse=True)
    assert reply.info.model_version and not reply.info.degraded
    assert reply.member_id == known_member


def test_recommend_filters_at_store(server: RunningServer, known_member: str, store_id: str) -> None:
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    reply = stub.Recommend(rec.RecommendRequest(
        member_id=known_member, channel=common_pb2.CHANNEL_POS, store_id=store_id, k=5, exclude_purchased=True,
        filter=common_pb2.ItemFilter(in_stock_only=True)), metadata=_md("pos"), timeout=5)
    assert 0 < len(reply.items.item_ids) <= 5 and not reply.info.degraded
    assert {common_pb2.REASON_IN_STOCK_AT_STORE, common_pb2.REASON_EXCLUDED_PURCHASED} <= set(
        reply.info.applied_filters)
    purchased = server.purchased(known_member)
    assert not purchased & set(reply.items.item_ids)
    assert all(server.stock(store_id, i) > 0 for i in reply.items.item_ids)


def test_recommend_category_filter(server: RunningServer, known_member: str, category: str) -> None:
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    reply = stub.Recommend(rec.RecommendRequest(member_id=known_member, channel=common_pb2.CHANNEL_WEB, k=5,
                                                filter=common_pb2.ItemFilter(category=category)),
                           metadata=_md("app"), timeout=5)
    assert reply.items.item_ids and all(server.category(i).startswith(category) for i in reply.items.item_ids)


def test_cold_start_member_is_never_an_error(server: RunningServer) -> None:
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    reply = stub.Recommend(rec.RecommendRequest(member_id="never-seen-before", channel=common_pb2.CHANNEL_APP, k=5),
                           metadata=_md("app"), timeout=5)
    assert len(reply.items.item_ids) == 5
    assert set(reply.items.reasons) <= {common_pb2.REASON_CONTENT_COLD_START, common_pb2.REASON_POPULAR_IN_CHANNEL}
    anon = stub.Recommend(rec.RecommendRequest(anonymous_id="device-1", channel=common_pb2.CHANNEL_STORE,
                                               store_id="s0", k=5), metadata=_md("pos"), timeout=5)
    assert len(anon.items.item_ids) == 5


def test_similar_items_and_not_found(server: RunningServer, item_id: str) -> None:
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    reply = stub.SimilarItems(rec.SimilarItemsRequest(item_id=item_id, k=5, channel=common_pb2.CHANNEL_APP),
                              metadata=_md("app"), timeout=5)
    assert len(reply.items.item_ids) == 5 and item_id not in reply.items.item_ids
    assert set(reply.items.reasons) == {common_pb2.REASON_SIMILAR_ITEM}
    err = _code(stub.SimilarItems, rec.SimilarItemsRequest(item_id="no-such-item", k=5, channel=common_pb2.CHANNEL_APP))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "item_id" in err.details()


def test_basket_complements(server: RunningServer, item_id: str, known_member: str) -> None:
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    reply = stub.RecommendForBasket(rec.RecommendForBasketRequest(
        basket_item_ids=[item_id, "unknown-item"], member_id=known_member, channel=common_pb2.CHANNEL_APP, k=5),
        metadata=_md("pos"), timeout=5)
    assert 0 < len(reply.items.item_ids) <= 5 and item_id not in reply.items.item_ids
    err = _code(stub.RecommendForBasket, rec.RecommendForBasketRequest(
        basket_item_ids=["x"], channel=common_pb2.CHANNEL_APP, k=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("request_", "field"), [
    (rec.RecommendRequest(channel=common_pb2.CHANNEL_APP, k=5), "member_id"),
    (rec.RecommendRequest(member_id="m", channel=common_pb2.CHANNEL_APP, k=0), "k"),
    (rec.RecommendRequest(member_id="m", channel=common_pb2.CHANNEL_APP, k=201), "k"),
    (rec.RecommendRequest(member_id="m", k=5), "channel"),
    (rec.RecommendRequest(member_id="m", channel=99, k=5), "channel"),
    (rec.RecommendRequest(member_id="m", channel=common_pb2.CHANNEL_POS, k=5), "store_id"),
])
def test_invalid_argument_names_the_field(server: RunningServer, request_: rec.RecommendRequest, field: str) -> None:
    err = _code(rec_grpc.RecommendationServiceStub(server.channel).Recommend, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}:")


def test_invalid_argument_on_other_rpcs(server: RunningServer) -> None:
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    err = _code(stub.SimilarItems, rec.SimilarItemsRequest(k=5, channel=common_pb2.CHANNEL_APP))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("item_id:")
    err = _code(stub.RecommendForBasket, rec.RecommendForBasketRequest(channel=common_pb2.CHANNEL_APP, k=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("basket_item_ids:")


def test_auth_refusals(server: RunningServer) -> None:
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    request = rec.RecommendRequest(member_id="m", channel=common_pb2.CHANNEL_APP, k=5)
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(request, metadata=(("x-api-key", "wrong"),), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    admin = admin_pb2_grpc.AdminServiceStub(server.channel)
    for role in ("app", "pos", "campaign"):
        assert _code(admin.GetModelInfo, admin_pb2.GetModelInfoRequest(), role).code() == \
            grpc.StatusCode.PERMISSION_DENIED
    events = events_pb2_grpc.EventServiceStub(server.channel)
    err = _code(events.TrackEvents, events_pb2.TrackEventsRequest(), "campaign")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_admin_model_info_and_reload(server: RunningServer) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(server.channel)
    info = admin.GetModelInfo(admin_pb2.GetModelInfoRequest(), metadata=_md("admin"), timeout=5).model
    assert info.version and info.n_items > 0 and info.n_members > 0 and info.create_time.seconds > 1_700_000_000
    assert info.metrics
    again = admin.ReloadModel(admin_pb2.ReloadModelRequest(), metadata=_md("admin"), timeout=30).model
    assert again.version == info.version
