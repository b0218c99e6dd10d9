"""The outermost server interceptor: request ids, the standard gRPC server metrics and the access log.

Every RPC gets a request id, the caller's `x-request-id` metadata or a fresh one, sent back in the
trailing metadata and attached to every log record of the call (`logs.request_context`). When metrics are
enabled it counts `grpc_server_started_total` / `grpc_server_handled_total` and observes
`grpc_server_handling_seconds`, plus omnirec's answers by method, intent and reason and degraded
answers by the short name of their `degraded_reason`. It reads the
member id, decision id and model version off the request (as the API interceptor decoded it,
`logs.note_request`) and the response by field name, so the servicers stay proto <-> domain.

It runs outside the API-key interceptor, so refused calls are counted and logged too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message

from omnirec import logs
from omnirec.logs import LoggingConfig, RequestContext
from omnirec.service import metrics
from omnirec.v1 import common_pb2

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID = 128

SERVER_FAULTS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
                           grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS,
                           grpc.StatusCode.UNIMPLEMENTED})
"""Logged at WARNING; the other non-OK codes are the caller's doing and logged at INFO."""

access_log = logging.getLogger("omnirec.access")


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID:
            return value
    return secrets.token_hex(16)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _status(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()  # a StatusCode, or its integer value on some grpcio versions
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int) and code in _CODES:
        return _CODES[code]
    if isinstance(error, asyncio.CancelledError | GeneratorExit):  # the caller went away
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


def _intent_names(request: object) -> dict[int, str] | None:
    """The value names of a request's `intent` enum, lower-cased without their prefix (`INTENT_NEXT_BASKET` ->
    `next_basket`); None for requests without that field."""
    descriptor = request.DESCRIPTOR.fields_by_name.get("intent") if isinstance(request, Message) else None
    if descriptor is None or descriptor.enum_type is None:
        return None
    return {v.number: v.name.removeprefix("INTENT_").lower() for v in descriptor.enum_type.values}


_INTENTS: dict[type, dict[int, str] | None] = {}
"""Request type -> `_intent_names`, built on a type's first call (descriptor lookups cost more than the rest)."""


def _intent(request: object) -> str:
    """The request's intent; `default` for requests without the field (or a value this build does not know)."""
    kind = type(request)
    if kind not in _INTENTS:
        _INTENTS[kind] = _intent_names(request)
    names = _INTENTS[kind]
    return "default" if names is None else names.get(request.intent, "default")  # type: ignore[attr-defined]


_REASONS = {v.number: v.name.removeprefix("REASON_").lower() for v in common_pb2.Reason.DESCRIPTOR.values}


def _has_degraded(fields: Mapping[str, object]) -> bool:
    return "degraded" in fields and "degraded_reason" in fields


class _Shape:
    """Where a response type keeps what the answer metrics read, found once per type from its descriptor: a
    protobuf attribute read builds a wrapper object, and reading one that is not there raises inside `getattr`,
    each more CPU than counting the call."""

    __slots__ = ("ranked", "info", "degraded")

    def __init__(self, response: Message) -> None:
        fields = response.DESCRIPTOR.fields_by_name
        items = fields.get("items")
        self.ranked = items is not None and items.message_type is not None \
            and "reasons" in items.message_type.fields_by_name
        """`items.reasons`: a ranked answer, counted by its first item's reason."""
        info = fields.get("info")
        self.info = info is not None and info.message_type is not None \
            and _has_degraded(info.message_type.fields_by_name)
        """`info.degraded` / `info.degraded_reason` (`ResponseInfo`); else the response's own, when it has them."""
        self.degraded = self.info or _has_degraded(fields)


_SHAPES: dict[type, _Shape] = {}


def _shape(response: Message) -> _Shape:
    kind = type(response)
    shape = _SHAPES.get(kind)
    if shape is None:
        shape = _SHAPES[kind] = _Shape(response)
    return shape


def _first_reason(response: Message) -> str:
    """The reason code of a ranked answer's first item (`_Shape.ranked`); `empty` for no item."""
    reasons = response.items.reasons  # type: ignore[attr-defined]
    return _REASONS.get(reasons[0], "unknown") if reasons else "empty"


def _degraded_reasons(reason: str) -> list[str]:
    """Short names of why an answer is degraded: each `degraded_reason` part's phrase before its detail
    ("stock not checked: ..." -> `stock_not_checked`), so the label set stays small."""
    return [re.sub(r"\W+", "_", re.sub(r"\(.*?\)", "", part.partition(":")[0])).strip("_").lower() or "unspecified"
            for part in reason.split("; ")]


def _answer_fields(request: object, response: Message | None, member_ids: bool) -> dict[str, object]:
    fields: dict[str, object] = {}
    if member_ids and getattr(request, "member_id", ""):
        fields["member_id"] = request.member_id  # type: ignore[attr-defined]
    if response is None:
        return fields
    info = getattr(response, "info", None)
    for name, source in (("decision_id", response), ("model_version", response), ("model_version", info),
                         ("degraded", response), ("degraded", info)):
        value = getattr(source, name, None) if source is not None else None
        if value:
            fields[name] = value
    return fields


def _degraded(response: Message | None) -> bool:
    """Whether an answer is degraded, without building its log fields: with `access_log = "errors"` (the
    default) this is all an OK call asks of the access log."""
    if response is None:
        return False
    info = getattr(response, "info", None)
    return bool(getattr(response, "degraded", False) or (info is not None and getattr(info, "degraded", False)))


class _Method:
    """What one method's calls share: its labels, its metric values, how its calls are logged."""

    def __init__(self, method: str, grpc_type: str, config: LoggingConfig) -> None:
        service, _, self.name = method.lstrip("/").partition("/")
        self.config = config
        self.metrics = m = metrics.current()
        self.labels = (grpc_type, service, self.name)
        # Looked up once each: a lookup costs more than recording the call.
        self.started = m.count(m.started, *self.labels) if m else None
        self.handling = m.timing(m.handling, *self.labels) if m else None
        self._handled: dict[grpc.StatusCode, metrics.Count] = {}
        self._code: grpc.StatusCode | None = None
        self._code_handled: metrics.Count | None = None
        self._answers: dict[tuple[str, str], metrics.Count] = {}

    def record(self, m: metrics.ServiceMetrics, code: grpc.StatusCode, seconds: float, request: object,
               response: Message | None) -> None:
        self.handling.observe(seconds)  # type: ignore[union-attr]
        if code is not self._code:  # an enum's hash is a Python call: a call with the last call's code skips it
            handled = self._handled.get(code)
            if handled is None:
                handled = self._handled[code] = m.count(m.handled, *self.labels, code.name)
            self._code, self._code_handled = code, handled
        self._code_handled.inc()  # type: ignore[union-attr]
        if response is None:
            return
        shape = _shape(response)
        if shape.ranked:
            key = (_intent(request), _first_reason(response))
            answers = self._answers.get(key)
            if answers is None:
                answers = self._answers[key] = m.count(m.answers, self.name, *key)
            answers.inc()
        if shape.degraded:
            info = response.info if shape.info else response  # type: ignore[attr-defined]
            if info.degraded:
                for why in _degraded_reasons(info.degraded_reason):
                    m.count(m.degraded, self.name, why).inc()

    def begin(self, context: grpc.aio.ServicerContext) -> _Call:
        request_id = _request_id(context.invocation_metadata())
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        if self.started is not None:
            self.started.inc()
        return _Call(self, RequestContext(request_id, self.name))


class _Call:
    """One RPC from its start to its status: the request context its log records carry, and its timer."""

    __slots__ = ("method", "ctx", "token", "start")

    def __init__(self, method: _Method, ctx: RequestContext) -> None:
        self.method = method
        self.ctx = ctx
        self.token = logs.request_context.set(ctx)
        self.start = time.perf_counter()

    def end(self, context: grpc.aio.ServicerContext, response: Message | None, error: BaseException | None) -> None:
        seconds = time.perf_counter() - self.start
        code = _status(context, error)
        method, request = self.method, self.ctx.request
        if method.metrics is not None:
            method.record(method.metrics, code, seconds, request, response)
        _access_log(method.config, method.name, request, response, code, seconds, self.ctx.request_id)
        logs.request_context.reset(self.token)


def _access_log(config: LoggingConfig, method: str, request: object, response: Message | None,
                code: grpc.StatusCode, seconds: float, request_id: str) -> None:
    if config.access_log == "off":
        return
    if config.access_log == "errors" and code is grpc.StatusCode.OK and not _degraded(response):
        return
    fields = _answer_fields(request, response, config.member_ids)
    level = logging.WARNING if code in SERVER_FAULTS else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    duration_ms = round(seconds * 1000, 3)
    status = code.name
    # The record is made and handled directly: `Logger.log` would also look up the calling frame for a
    # source location that access lines do not need (a tenth of a line's cost, one line per call).
    access_log.handle(access_log.makeRecord(
        access_log.name, level, __file__, 0, "%s %s %.1f ms", (method, status, duration_ms), None,
        extra={"request_id": request_id, "method": method, "status": status, "duration_ms": duration_ms, **fields}))


def _unary(method: _Method, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    inner = handler.unary_unary

    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = method.begin(context)
        response = error = None
        try:
            response = await inner(request, context)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.end(context, response, error)

    return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=handler.request_deserializer,
                                               response_serializer=handler.response_serializer)


def _server_stream(method: _Method, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A streaming answer is timed to its last message; the access line has no per-message fields."""
    inner = handler.unary_stream

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = method.begin(context)
        error = None
        try:
            async for reply in inner(request, context):
                yield reply
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.end(context, None, error)

    return grpc.unary_stream_rpc_method_handler(streaming, request_deserializer=handler.request_deserializer,
                                                response_serializer=handler.response_serializer)


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Request ids, gRPC metrics (when `metrics.enable` ran) and the access log, in one wrapper per method.

    Wrapped: unary calls, and server-streaming calls written as async generators (every omnirec RPC);
    other shapes (health's Watch, reflection's bidirectional stream) pass through.
    """

    def __init__(self, config: LoggingConfig) -> None:
        self._config = config
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:  # the inner interceptor's handlers are built once
            return cached[1]
        if handler.unary_unary is not None:
            wrapped = _unary(_Method(method, "unary", self._config), handler)
        elif handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            wrapped = _server_stream(_Method(method, "server_stream", self._config), handler)
        else:
            return handler
        self._wrapped[method] = (handler, wrapped)
        return wrapped
