"""TrackEvents and LinkIdentity: all-or-nothing validation, live feature updates, the event log."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import timestamp_pb2
from service_harness import API_KEYS, RunningServer

from omnirec.domain.readers import read_event_log
from omnirec.v1 import common_pb2, events_pb2, events_pb2_grpc
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc

MD = (("x-api-key", API_KEYS["app"]),)
NOW = int(time.time())


def _at(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def _event(i: int, **overrides: object) -> events_pb2.Event:
    fields: dict[str, object] = {"event_id": f"e{i}", "member_id": "m-live", "item_id": "",
                                 "channel": common_pb2.CHANNEL_APP, "event_type": events_pb2.EVENT_TYPE_VIEW,
                                 "event_time": _at(NOW)}
    fields.update(overrides)
    return events_pb2.Event(**fields)  # type: ignore[arg-type]


def test_track_events_applies_logs_and_dedups(server: RunningServer, item_id: str) -> None:
    stub = events_pb2_grpc.EventServiceStub(server.channel)
    batch = [_event(1, item_id=item_id),
             _event(2, item_id=item_id, event_type=events_pb2.EVENT_TYPE_PURCHASE, quantity=2,
                    price_minor_units=950, channel=common_pb2.CHANNEL_POS, store_id="s0"),
             _event(3, anonymous_id="dev-9", member_id="", event_type=events_pb2.EVENT_TYPE_STORE_VISIT,
                    channel=common_pb2.CHANNEL_STORE, store_id="s0")]
    reply = stub.TrackEvents(events_pb2.TrackEventsRequest(events=batch), metadata=MD, timeout=5)
    assert (reply.accepted, reply.duplicates) == (3, 0)
    again = stub.TrackEvents(events_pb2.TrackEventsRequest(events=batch), metadata=MD, timeout=5)
    assert (again.accepted, again.duplicates) == (0, 3)

    logged = read_event_log(server.config.service.event_log_dir)
    assert logged.num_rows == 3
    assert logged.column("event_type").to_pylist() == ["view", "purchase", "store_visit"]
    assert logged.column("quantity").to_pylist() == [1, 2, 1]
    assert logged.column("price").to_pylist()[1] == 9.5  # minor units on the wire, major units in the log
    assert set(logged.column("ts").to_pylist()) == {NOW}

    # The live purchase is now excluded for that member, who is unknown to the model (cold start).
    recs = rec_grpc.RecommendationServiceStub(server.channel).Recommend(
        rec.RecommendRequest(member_id="m-live", channel=common_pb2.CHANNEL_APP, k=50, exclude_purchased=True),
        metadata=MD, timeout=5)
    assert item_id not in recs.items.item_ids


@pytest.mark.parametrize(("bad", "field"), [
    ({"event_id": ""}, "events[1].event_id"),
    ({"member_id": ""}, "events[1].member_id"),
    ({"channel": 0}, "events[1].channel"),
    ({"event_type": 0}, "events[1].event_type"),
    ({"item_id": ""}, "events[1].item_id"),
    ({"channel": common_pb2.CHANNEL_POS}, "events[1].store_id"),
    ({"quantity": -1}, "events[1].quantity"),
    ({"price_minor_units": -200}, "events[1].price_minor_units"),
    ({"price_minor_units": 2**63 - 1}, "events[1].price_minor_units"),
    ({"price_minor_units": 100_000_001}, "events[1].price_minor_units"),
    ({"quantity": 2_147_483_647}, "events[1].quantity"),
    ({"event_time": timestamp_pb2.Timestamp(seconds=NOW, nanos=-1)}, "events[1].event_time"),
    ({"event_time": _at(NOW * 1000)}, "events[1].event_time"),  # milliseconds sent as seconds
    ({"event_time": _at(4_102_444_800)}, "events[1].event_time"),  # 2100-01-01
    ({"event_time": _at(253_402_300_799)}, "events[1].event_time"),  # the largest valid Timestamp
    ({"event_time": _at(-1)}, "events[1].event_time"),
    ({"event_time": _at(NOW - 400 * 86_400)}, "events[1].event_time"),
    ({"event_id": "e\n2"}, "events[1].event_id"),
    ({"anonymous_id": "dev\x00"}, "events[1].anonymous_id"),
    ({"member_id": "m" * 129}, "events[1].member_id"),
    ({"store_id": "s\x7f"}, "events[1].store_id"),
])
def test_invalid_event_rejects_the_whole_batch(server: RunningServer, item_id: str, bad: dict[str, object],
                                               field: str) -> None:
    stub = events_pb2_grpc.EventServiceStub(server.channel)
    batch = [_event(1, item_id=item_id), _event(2, **{"item_id": item_id, **bad})]
    with pytest.raises(grpc.RpcError) as err:
        stub.TrackEvents(events_pb2.TrackEventsRequest(events=batch), metadata=MD, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")
    assert read_event_log(server.config.service.event_log_dir).num_rows == 0


def test_link_identity(server: RunningServer, item_id: str) -> None:
    stub = events_pb2_grpc.EventServiceStub(server.channel)
    stub.TrackEvents(events_pb2.TrackEventsRequest(events=[_event(1, member_id="", anonymous_id="dev-1",
                                                                  item_id=item_id)]), metadata=MD, timeout=5)
    reply = stub.LinkIdentity(events_pb2.LinkIdentityRequest(anonymous_id="dev-1", member_id="m-linked"),
                              metadata=MD, timeout=5)
    assert reply.credited_events >= 1
    with pytest.raises(grpc.RpcError) as err:
        stub.LinkIdentity(events_pb2.LinkIdentityRequest(anonymous_id="dev-1"), metadata=MD, timeout=5)
    assert err.value.details().startswith("member_id:")
