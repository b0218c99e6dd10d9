"""EventService: validate a batch all-or-nothing, then hand it to `service.ingest` (log, then apply, as one unit)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import pyarrow as pa

from omnirec.domain.errors import InvalidArgument
from omnirec.domain.schema import EVENT_SCHEMA
from omnirec.domain.vocab import Col, EventType
from omnirec.service import validation as v
from omnirec.service.ingest import Ingest
from omnirec.service.registry import APP_POS_ADMIN, ServiceSpec
from omnirec.v1 import events_pb2, events_pb2_grpc

MAX_BATCH = 1000

_EVENT_TYPES: dict[int, EventType] = {events_pb2.EventType.Value(f"EVENT_TYPE_{e.name}"): e for e in EventType}

SERVICE = events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name


@dataclass(frozen=True)
class EventRules:
    """What TrackEvents accepts beyond the per-field checks: how far from the server's clock an event may be."""

    max_clock_skew_s: float
    max_event_age_s: float


def events_table(events: Sequence[events_pb2.Event], now: int, rules: EventRules) -> tuple[pa.Table, list[str]]:
    """The batch as an EVENT_SCHEMA table plus the event ids; the first bad event names `events[i].field`."""
    if not 1 <= len(events) <= MAX_BATCH:
        raise InvalidArgument("events", f"send 1..{MAX_BATCH} events per batch (got {len(events)})")
    rows: dict[str, list[object]] = {f.name: [] for f in EVENT_SCHEMA}
    event_ids: list[str] = []
    for i, e in enumerate(events):
        at = f"events[{i}]"
        event_ids.append(v.required(e.event_id, f"{at}.event_id"))
        member_id, anonymous_id = v.one_of(e.member_id, e.anonymous_id, f"{at}.member_id", f"{at}.anonymous_id")
        channel = v.channel(e.channel, f"{at}.channel")
        event_type = _EVENT_TYPES.get(e.event_type)
        if event_type is None:
            raise InvalidArgument(f"{at}.event_type", f"unknown or unspecified event type ({e.event_type})")
        item_id = v.required(e.item_id, f"{at}.item_id") if event_type.needs_item else v.optional_id(
            e.item_id, f"{at}.item_id")
        ts = v.event_time(e.event_time if e.HasField("event_time") else None, f"{at}.event_time", now,
                          rules.max_clock_skew_s, rules.max_event_age_s)
        for col, value in ((Col.MEMBER_ID, member_id), (Col.ANONYMOUS_ID, anonymous_id), (Col.ITEM_ID, item_id),
                           (Col.CHANNEL, channel.value), (Col.EVENT_TYPE, event_type.value),
                           (Col.STORE_ID, v.store(e.store_id, channel, f"{at}.store_id")),
                           (Col.QUANTITY, v.quantity(e.quantity, f"{at}.quantity") or 1),
                           (Col.PRICE, v.money(e.price_minor_units, f"{at}.price_minor_units")), (Col.TS, ts)):
            rows[col].append(value)
    if len(set(event_ids)) != len(event_ids):
        raise InvalidArgument("events", "event_id must be unique within a batch")
    return pa.table(rows, schema=EVENT_SCHEMA), event_ids


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(self, ingest: Ingest, rules: EventRules) -> None:
        self._ingest = ingest
        self._rules = rules

    async def TrackEvents(self, request: events_pb2.TrackEventsRequest,
                          context: grpc.aio.ServicerContext) -> events_pb2.TrackEventsResponse:
        table, event_ids = events_table(request.events, int(time.time()), self._rules)
        report = await self._ingest.track(table, event_ids)
        return events_pb2.TrackEventsResponse(accepted=report.applied, duplicates=report.duplicates)

    async def LinkIdentity(self, request: events_pb2.LinkIdentityRequest,
                           context: grpc.aio.ServicerContext) -> events_pb2.LinkIdentityResponse:
        anonymous_id = v.required(request.anonymous_id, "anonymous_id")
        member_id = v.required(request.member_id, "member_id")
        credited = await self._ingest.link(anonymous_id, member_id)
        return events_pb2.LinkIdentityResponse(credited_events=credited)


def spec(ingest: Ingest, rules: EventRules) -> ServiceSpec:
    return ServiceSpec.of(events_pb2, "EventService", events_pb2_grpc.add_EventServiceServicer_to_server,
                          EventServicer(ingest, rules), {"TrackEvents": APP_POS_ADMIN, "LinkIdentity": APP_POS_ADMIN})
