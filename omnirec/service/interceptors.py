"""The server interceptor: API-key authentication/roles, and domain errors -> gRPC status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from omnirec import logs
from omnirec.domain.errors import InvalidArgument, OmnirecError
from omnirec.service.config import Role
from omnirec.service.decoding import decode

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

API_KEY_HEADER = "x-api-key"

PUBLIC_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                   "/grpc.reflection.v1.ServerReflection/")
"""Load-balancer health probes and schema reflection need no key: they reveal nothing private."""


def _aborting_handler(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


def rich_status(exc: OmnirecError) -> grpc.Status:
    """`exc` as a gRPC status with rich details (`grpc-status-details-bin`): bad input carries a
    `google.rpc.BadRequest` naming the field, so clients in any language can point at it without
    parsing the message."""
    code = grpc.StatusCode[exc.grpc_status_code()]
    status = status_pb2.Status(code=code.value[0], message=str(exc))
    if isinstance(exc, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.description)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return rpc_status.to_status(status)


def _mapping_errors(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` (unary or server-streaming) with an `OmnirecError` it raises answered as its rich status.

    The request is decoded here rather than by grpc, so bytes that are not a valid request (malformed,
    invalid UTF-8 in a string) are INVALID_ARGUMENT naming the field, not UNKNOWN. Anything else
    propagates: grpc answers UNKNOWN and logs the traceback, so bugs stay visible.
    """
    parse = handler.request_deserializer

    async def fail(exc: OmnirecError, context: grpc.aio.ServicerContext) -> None:
        status = rich_status(exc)
        # Keep what outer layers already set for the trailers (the request id) beside the details.
        await context.abort(status.code, status.details,
                            (*(context.trailing_metadata() or ()), *status.trailing_metadata))

    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def streaming(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for reply in stream(decode(parse, raw), context):
                    yield reply
            except OmnirecError as exc:
                await fail(exc, context)

        return grpc.unary_stream_rpc_method_handler(streaming, response_serializer=handler.response_serializer)
    if handler.unary_unary is None:
        return handler
    inner = handler.unary_unary

    async def behaviour(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = decode(parse, raw)
            logs.note_request(request)
            return await inner(request, context)
        except OmnirecError as exc:
            await fail(exc, context)

    return grpc.unary_unary_rpc_method_handler(behaviour, response_serializer=handler.response_serializer)


class ApiInterceptor(grpc.aio.ServerInterceptor):
    """The server's one interceptor: the caller's `x-api-key` to a role, refusing RPCs that role may not call,
    and domain errors (`OmnirecError`) to gRPC status codes.

    `method_roles` maps full method names ("/omnirec.v1.AdminService/ReloadModel") to the roles allowed;
    a method missing from it is refused to everyone (deny by default) except the public services.
    Each method's error-mapping handler is built once, on its first call, not per call.
    """

    def __init__(self, api_keys: Mapping[str, Role], method_roles: Mapping[str, frozenset[Role]]) -> None:
        self._api_keys = dict(api_keys)
        self._method_roles = dict(method_roles)
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(PUBLIC_SERVICES):
            return await continuation(handler_call_details)
        key = next((v for k, v in handler_call_details.invocation_metadata or () if k == API_KEY_HEADER), None)
        role = self._api_keys.get(key) if isinstance(key, str) else None
        if role is None:
            reason = "missing" if key is None else "unknown"
            return _aborting_handler(grpc.StatusCode.UNAUTHENTICATED, f"{API_KEY_HEADER}: {reason} API key")
        if role not in self._method_roles.get(method, frozenset()):
            return _aborting_handler(grpc.StatusCode.PERMISSION_DENIED, f"role {role.value!r} may not call {method}")
        if method not in self._handlers:  # a method's registered handler never changes: wrap it once
            handler = await continuation(handler_call_details)
            self._handlers[method] = None if handler is None else _mapping_errors(handler)
        return self._handlers[method]
