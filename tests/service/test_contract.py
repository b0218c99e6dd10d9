"""The contract as a client in another language sees it: reflection under both names, rich error details."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from service_harness import API_KEYS, METHODS, RunningServer, call_raw

from omnirec.v1 import common_pb2, events_pb2, offers_pb2, recommendation_pb2

MD = (("x-api-key", API_KEYS["admin"]),)
BAD = b"\xff\xfe\xfd\xfc"
"""Four bytes that are not UTF-8; they replace the same-length marker `@@@@` in a serialised request."""


def _call(server: RunningServer, method: str, body: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call_raw(server.channel, method, body, MD)
    return err.value


def _violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    """The field violations a client finds in the status details (`grpc-status-details-bin`)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no rich status details"
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found += [(v.field, v.description) for v in bad_request.field_violations]
    return found


def test_every_rpc_answers_an_undecodable_body_with_a_field_violation(server: RunningServer) -> None:
    for method in METHODS:
        err = _call(server, method, b"\x08")  # a field tag with its value cut off
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert [field for field, _ in _violations(err)] == ["request"], method


def _with_bad_utf8(request: Message) -> bytes:
    raw = request.SerializeToString()
    assert raw.count(b"@@@@") == 1
    return raw.replace(b"@@@@", BAD)


APP, VIEW = common_pb2.CHANNEL_APP, events_pb2.EVENT_TYPE_VIEW
INVALID_UTF8 = [
    ("/omnirec.v1.RecommendationService/Recommend",
     recommendation_pb2.RecommendRequest(member_id="@@@@", channel=APP, k=5), "member_id"),
    ("/omnirec.v1.RecommendationService/RecommendForBasket",
     recommendation_pb2.RecommendForBasketRequest(basket_item_ids=["i1"], channel=APP, k=5,
                                                  filter=common_pb2.ItemFilter(category="@@@@")), "filter.category"),
    ("/omnirec.v1.EventService/TrackEvents",
     events_pb2.TrackEventsRequest(events=[
         events_pb2.Event(event_id="e1", member_id="m1", item_id="i1", channel=APP, event_type=VIEW),
         events_pb2.Event(event_id="e2", member_id="m1", item_id="@@@@", channel=APP, event_type=VIEW)]),
     "events[1].item_id"),
    ("/omnirec.v1.OfferService/DecideCoupon",
     offers_pb2.DecideCouponRequest(request_id="r1", member_id="m1", channel=APP, basket_item_ids=["i1", "@@@@"]),
     "basket_item_ids[1]"),
    ("/omnirec.v1.OfferService/NextBestOffer",
     offers_pb2.NextBestOfferRequest(member_id="m1", channel=APP, k=3, context={"page": "@@@@"}), "context"),
]


def test_invalid_utf8_is_invalid_argument_naming_the_field(server: RunningServer) -> None:
    for method, request, field in INVALID_UTF8:
        err = _call(server, method, _with_bad_utf8(request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert err.details().startswith(f"{field}: ")
        assert _violations(err) == [(field, "not valid UTF-8")]


def test_a_rejected_value_carries_its_field_and_reason(server: RunningServer) -> None:
    request = recommendation_pb2.RecommendRequest(member_id="m1", channel=APP, k=0)
    err = _call(server, "/omnirec.v1.RecommendationService/Recommend", request.SerializeToString())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "k: must be between 1 and 200 (got 0)"
    assert _violations(err) == [("k", "must be between 1 and 200 (got 0)")]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_the_services(server: RunningServer, version: str) -> None:
    """grpcurl and current grpc-go/java ask `grpc.reflection.v1`; older tools `v1alpha`. Both must answer."""
    call = server.channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    listed, described = call(iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                                   reflection_pb2.ServerReflectionRequest(
                                       file_containing_symbol="omnirec.v1.EventService")]), timeout=5)
    services = {s.name for s in listed.list_services_response.service}
    assert {"omnirec.v1.RecommendationService", "omnirec.v1.EventService", "omnirec.v1.OfferService",
            "omnirec.v1.AdminService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= services
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in described.file_descriptor_response.file_descriptor_proto]
    assert "omnirec/v1/events.proto" in {f.name for f in files}
