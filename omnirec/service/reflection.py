"""Server reflection under both names clients ask for: `grpc.reflection.v1` (grpcurl, Postman, current
grpc-go and grpc-java) and `grpc.reflection.v1alpha` (older tools).

grpcio-reflection ships only v1alpha. v1 is the same protocol with the package renamed (identical messages
and field numbers), so one servicer answers both; the v1 file descriptor is registered as well, so a client
can also describe the reflection service itself under its v1 name.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1ALPHA, _V1 = "grpc.reflection.v1alpha", "grpc.reflection.v1"


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """The v1alpha reflection file with its package (and every type reference) renamed to v1."""
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = "grpc/reflection/v1/reflection.proto"
    file.package = _V1
    file.ClearField("options")
    for message in file.message_type:
        for f in message.field:
            if f.HasField("type_name"):
                f.type_name = f.type_name.replace(f".{_V1ALPHA}.", f".{_V1}.")
    for method in file.service[0].method:
        method.input_type = method.input_type.replace(f".{_V1ALPHA}.", f".{_V1}.")
        method.output_type = method.output_type.replace(f".{_V1ALPHA}.", f".{_V1}.")
    return file


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1_SERVICE_NAME)
    except KeyError:
        pool.Add(_v1_file())


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection (v1 and v1alpha) listing `service_names` and the reflection services themselves."""
    _register_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer([*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME,
                                                                          {"ServerReflectionInfo": v1}),))
