"""EventService: validate a batch all-or-nothing, apply it to the live features, append it to the event log."""

from __future__ import annotations

import time

import grpc
import pyarrow as pa

from omnirec.domain.errors import InvalidArgument
from omnirec.domain.schema import EVENT_SCHEMA
from omnirec.domain.vocab import Col, EventType
from omnirec.service import validation as v
from omnirec.service.event_log import EventLog
from omnirec.service.features import Features
from omnirec.service.registry import APP_POS_ADMIN, ServiceSpec
from omnirec.v1 import events_pb2, events_pb2_grpc

MAX_BATCH = 1000

_EVENT_TYPES: dict[int, EventType] = {events_pb2.EventType.Value(f"EVENT_TYPE_{e.name}"): e for e in EventType}

SERVICE = events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name


def events_table(events: list[events_pb2.Event], now: int) -> tuple[pa.Table, list[str]]:
    """The batch as an EVENT_SCHEMA table plus the event ids; the first bad event names `events[i].field`."""
    if not 1 <= len(events) <= MAX_BATCH:
        raise InvalidArgument("events", f"send 1..{MAX_BATCH} events per batch (got {len(events)})")
    rows: dict[str, list[object]] = {f.name: [] for f in EVENT_SCHEMA}
    event_ids: list[str] = []
    for i, e in enumerate(events):
        at = f"events[{i}]"
        v.required(e.event_id, f"{at}.event_id")
        v.one_of(e.member_id, e.anonymous_id, f"{at}.member_id", f"{at}.anonymous_id")
        channel = v.channel(e.channel, f"{at}.channel")
        event_type = _EVENT_TYPES.get(e.event_type)
        if event_type is None:
            raise InvalidArgument(f"{at}.event_type", f"unknown or unspecified event type ({e.event_type})")
        if event_type.needs_item:
            v.required(e.item_id, f"{at}.item_id")
        v.store(e.store_id, channel, f"{at}.store_id")
        if e.quantity < 0:
            raise InvalidArgument(f"{at}.quantity", f"must be >= 0 (got {e.quantity})")
        price = v.money(e.price_minor_units, f"{at}.price_minor_units")
        ts = v.unix_seconds(e.event_time, f"{at}.event_time") if e.HasField("event_time") else now
        event_ids.append(e.event_id)
        for col, value in ((Col.MEMBER_ID, e.member_id or None), (Col.ANONYMOUS_ID, e.anonymous_id or None),
                           (Col.ITEM_ID, e.item_id or None), (Col.CHANNEL, channel.value),
                           (Col.EVENT_TYPE, event_type.value), (Col.STORE_ID, e.store_id or None),
                           (Col.QUANTITY, e.quantity or 1), (Col.PRICE, price), (Col.TS, ts)):
            rows[col].append(value)
    if len(set(event_ids)) != len(event_ids):
        raise InvalidArgument("events", "event_id must be unique within a batch")
    return pa.table(rows, schema=EVENT_SCHEMA), event_ids


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(self, features: Features, event_log: EventLog, default_deadline_s: float) -> None:
        self._features = features
        self._log = event_log
        self._default_deadline_s = default_deadline_s

    async def TrackEvents(self, request: events_pb2.TrackEventsRequest,
                          context: grpc.aio.ServicerContext) -> events_pb2.TrackEventsResponse:
        table, event_ids = events_table(list(request.events), int(time.time()))
        budget = v.time_budget(context, self._default_deadline_s)
        fresh = await self._features.apply_events(table, event_ids, budget)
        await self._log.append(table.filter(pa.array(fresh)))
        accepted = sum(fresh)
        return events_pb2.TrackEventsResponse(accepted=accepted, duplicates=len(fresh) - accepted)

    async def LinkIdentity(self, request: events_pb2.LinkIdentityRequest,
                           context: grpc.aio.ServicerContext) -> events_pb2.LinkIdentityResponse:
        anonymous_id = v.required(request.anonymous_id, "anonymous_id")
        member_id = v.required(request.member_id, "member_id")
        budget = v.time_budget(context, self._default_deadline_s)
        credited = await self._features.link(anonymous_id, member_id, budget)
        return events_pb2.LinkIdentityResponse(credited_events=credited)


def spec(features: Features, event_log: EventLog, default_deadline_s: float) -> ServiceSpec:
    return ServiceSpec.of(events_pb2, "EventService", events_pb2_grpc.add_EventServiceServicer_to_server,
                          EventServicer(features, event_log, default_deadline_s),
                          {"TrackEvents": APP_POS_ADMIN, "LinkIdentity": APP_POS_ADMIN})
