"""The contract as a client in another language sees it: reflection under both names, rich error details."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2
from service_harness import RunningServer


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
