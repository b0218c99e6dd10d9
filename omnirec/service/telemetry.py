"""The outermost server interceptor: request ids, the standard gRPC server metrics and the access log.

Every RPC gets a request id, the caller's `x-request-id` metadata or a fresh one, sent back in the
trailing metadata and attached to every log record of the call (`logs.request_context`). When metrics are
enabled it counts `grpc_server_started_total` / `grpc_server_handled_total` and observes
`grpc_server_handling_seconds`, plus omnirec's answers by method, intent and reason and degraded
answers by the short name of their `degraded_reason`. It reads the
member id, decision id and model version off the request (as the API interceptor decoded it,
`logs.note_request`) and the response by field name, so the servicers stay proto <-> domain.

It runs outside the API-key interceptor, so refused calls are counted and logged too. Only unary-unary
methods are wrapped (every omnirec RPC); health's Watch and reflection's streams pass through.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from omnirec import logs
from omnirec.logs import LoggingConfig, RequestContext
from omnirec.service import metrics

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
    return uuid.uuid4().hex


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _status(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()  # a StatusCode, or its integer value on some grpcio versions
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int) and code in _CODES:
        return _CODES[code]
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


def _enum_name(message: object, field: str, prefix: str) -> str | None:
    """The name of an enum field's value, lower-cased without its prefix (`INTENT_NEXT_BASKET` -> `next_basket`)."""
    if not isinstance(message, Message):
        return None
    descriptor = message.DESCRIPTOR.fields_by_name.get(field)
    if descriptor is None or descriptor.enum_type is None:
        return None
    value = descriptor.enum_type.values_by_number.get(getattr(message, field))
    return value.name.removeprefix(prefix).lower() if value is not None else None


def _first_reason(response: Message) -> str | None:
    """The reason code of a ranked answer's first item; None for responses that rank no items."""
    items = getattr(response, "items", None)
    if not isinstance(items, Message) or "reasons" not in items.DESCRIPTOR.fields_by_name:
        return None
    reasons = items.reasons  # type: ignore[attr-defined]
    if not reasons:
        return "empty"
    value = items.DESCRIPTOR.fields_by_name["reasons"].enum_type.values_by_number.get(reasons[0])
    return value.name.removeprefix("REASON_").lower() if value is not None else "unknown"


def _degraded_reasons(info: object) -> list[str]:
    """Short names of why a ranked answer is degraded: each `degraded_reason` part's phrase before its
    detail ("stock not checked: ..." -> `stock_not_checked`), so the label set stays small."""
    if not getattr(info, "degraded", False):
        return []
    parts = str(getattr(info, "degraded_reason", "")).split("; ")
    return [re.sub(r"\W+", "_", re.sub(r"\(.*?\)", "", part.partition(":")[0])).strip("_").lower() or "unspecified"
            for part in parts]


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


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Request ids, gRPC metrics (when `metrics.enable` ran) and the access log, in one wrapper per method."""

    def __init__(self, config: LoggingConfig) -> None:
        self._config = config
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:  # the inner interceptor's handlers are built once
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary
        service, _, name = method.lstrip("/").partition("/")
        m = metrics.current()
        labels = ("unary", service, name)
        started = m.started.labels(*labels) if m else None
        handling = m.handling.labels(*labels) if m else None
        record = self._record

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id = _request_id(context.invocation_metadata())
            ctx = RequestContext(request_id, name)
            token = logs.request_context.set(ctx)
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            if started is not None:
                started.inc()
            start = time.perf_counter()
            response = error = None
            try:
                response = await inner(request, context)
                return response
            except BaseException as exc:
                error = exc
                raise
            finally:
                seconds = time.perf_counter() - start
                code = _status(context, error)
                if m is not None:
                    handling.observe(seconds)  # type: ignore[union-attr]
                    m.handled.labels(*labels, code.name).inc()
                    if response is not None:
                        reason = _first_reason(response)
                        if reason is not None:
                            m.answers.labels(name, _enum_name(ctx.request, "intent", "INTENT_") or "default",
                                             reason).inc()
                        for why in _degraded_reasons(getattr(response, "info", None)):
                            m.degraded.labels(name, why).inc()
                record(name, ctx.request, response, code, seconds, request_id)
                logs.request_context.reset(token)

        return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def _record(self, method: str, request: object, response: Message | None, code: grpc.StatusCode,
                seconds: float, request_id: str) -> None:
        mode = self._config.access_log
        if mode == "off":
            return
        fields = _answer_fields(request, response, self._config.member_ids)
        if mode == "errors" and code is grpc.StatusCode.OK and not fields.get("degraded"):
            return
        duration_ms = round(seconds * 1000, 3)
        level = logging.WARNING if code in SERVER_FAULTS else logging.INFO
        access_log.log(level, "%s %s %.1f ms", method, code.name, duration_ms,
                       extra={"request_id": request_id, "method": method, "status": code.name,
                              "duration_ms": duration_ms, **fields})
