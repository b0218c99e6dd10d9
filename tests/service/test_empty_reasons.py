"""An answer emptied by a filter says why in ResponseInfo.empty_reason; a full one leaves it empty."""

from __future__ import annotations

from service_harness import API_KEYS, RunningServer

from omnirec.v1 import common_pb2
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc

MD = (("x-api-key", API_KEYS["pos"]),)


def test_empty_answers_say_why(server: RunningServer, known_member: str, item_id: str) -> None:
    stub = rec_grpc.RecommendationServiceStub(server.channel)
    full = stub.Recommend(rec.RecommendRequest(member_id=known_member, channel=common_pb2.CHANNEL_APP, k=5),
                          metadata=MD, timeout=5)
    assert full.items.item_ids and full.info.empty_reason == ""

    no_category = stub.Recommend(rec.RecommendRequest(
        member_id=known_member, channel=common_pb2.CHANNEL_APP, k=5,
        filter=common_pb2.ItemFilter(category="no-such-department")), metadata=MD, timeout=5)
    assert not no_category.items.item_ids
    assert no_category.info.empty_reason == "category 'no-such-department' has no items in the catalogue"

    unknown_store = stub.Recommend(rec.RecommendRequest(
        member_id=known_member, channel=common_pb2.CHANNEL_POS, store_id="no-such-store", k=5,
        filter=common_pb2.ItemFilter(in_stock_only=True)), metadata=MD, timeout=5)
    assert not unknown_store.items.item_ids
    assert "in stock at store 'no-such-store' (an unknown store" in unknown_store.info.empty_reason

    similar = stub.SimilarItems(rec.SimilarItemsRequest(
        item_id=item_id, k=5, channel=common_pb2.CHANNEL_POS, store_id="no-such-store",
        filter=common_pb2.ItemFilter(in_stock_only=True)), metadata=MD, timeout=5)
    assert not similar.items.item_ids and "no-such-store" in similar.info.empty_reason
