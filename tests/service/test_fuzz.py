"""Random and hostile requests to every RPC of a real server (real Redis, the session's trained bundle).

Whatever arrives, the answer is a deliberate status (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...),
never UNKNOWN or INTERNAL (an unhandled exception or a crash), and the server keeps serving afterwards.
Requests are generated from the request types' descriptors, so a new field or RPC is fuzzed without
touching this file. `OMNIREC_FUZZ_EXAMPLES` (default 500, about 15 s) sets how many requests one run sends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_harness import API_KEYS, METHODS, RunningServer, call_raw

from omnirec.offers.catalogue import load_catalogue
from omnirec.v1 import common_pb2, events_pb2, recommendation_pb2, recommendation_pb2_grpc

MD = (("x-api-key", API_KEYS["admin"]),)  # admin may call every RPC
CALLERS = st.sampled_from([MD, MD, MD, *((("x-api-key", key),) for key in API_KEYS.values()), (),
                           (("x-api-key", "not-a-key"),), (("x-api-key", ""),), (("x-api-key", "x" * 4000),),
                           (("x-api-key", API_KEYS["admin"]), ("x-api-key", "second"))])
"""Mostly admin (so the request reaches the handler), sometimes another role, no key, a wrong or huge key."""
EXAMPLES = int(os.environ.get("OMNIREC_FUZZ_EXAMPLES", "500"))
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

BAD_UTF8_MARKER = "\x01BADUTF8\x01"
"""Strings drawn as this marker are swapped, after serialisation, for as many bytes that are not UTF-8."""
HOSTILE_STRINGS = ["", " ", "\x00", "\n", "\x7f", "a\x00b", "../../etc/passwd", "%s%n", "'; DROP TABLE x;--",
                   "\u202e", "\ufeff", "😀" * 50, "x" * 5000, "{", "*", "?", "[", "\\", "omnirec:v1:*", BAD_UTF8_MARKER]
_T = descriptor.FieldDescriptor
_INT_RANGES = {_T.TYPE_INT32: (-2**31, 2**31 - 1), _T.TYPE_SINT32: (-2**31, 2**31 - 1),
               _T.TYPE_SFIXED32: (-2**31, 2**31 - 1), _T.TYPE_INT64: (-2**63, 2**63 - 1),
               _T.TYPE_SINT64: (-2**63, 2**63 - 1), _T.TYPE_SFIXED64: (-2**63, 2**63 - 1),
               _T.TYPE_UINT32: (0, 2**32 - 1), _T.TYPE_FIXED32: (0, 2**32 - 1), _T.TYPE_UINT64: (0, 2**64 - 1),
               _T.TYPE_FIXED64: (0, 2**64 - 1), _T.TYPE_ENUM: (-2**31, 2**31 - 1)}


HOSTILE, PLAUSIBLE, SPARSE, MIXED = "hostile", "plausible", "sparse", "mixed"
"""Generation modes: every field hostile (and each maybe absent); every field plausible, so the request reaches
the deep paths; plausible values in some fields only (for "set one of these" rules); or plausible but for one
hostile field (per nesting level)."""
NOW = int(time.time())


def _hostile(field: descriptor.FieldDescriptor, ids: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    t = field.type
    if t == _T.TYPE_STRING:
        return st.one_of(ids, st.sampled_from(HOSTILE_STRINGS), st.text(max_size=30))
    if t == _T.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == _T.TYPE_BOOL:
        return st.booleans()
    if t in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        return st.floats(width=32 if t == _T.TYPE_FLOAT else 64)  # NaN and +-inf included
    lo, hi = _INT_RANGES[t]
    usual = [v.number for v in field.enum_type.values] if t == _T.TYPE_ENUM else [5, 200, 201, NOW, NOW * 1000]
    edges = [n for n in (lo, hi, 0, -1, 1, lo + 1, hi - 1, *usual) if lo <= n <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def _plausible(field: descriptor.FieldDescriptor, ids: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    t = field.type
    if t == _T.TYPE_STRING:
        return ids
    if t == _T.TYPE_BYTES:
        return st.binary(max_size=8)
    if t == _T.TYPE_BOOL:
        return st.booleans()
    if t in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        return st.floats(0, 1000)
    if t == _T.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values if v.number] or [0])
    return st.integers(1, 20)


def _field(field: descriptor.FieldDescriptor, ids: st.SearchStrategy[str], mode: str,
           depth: int) -> st.SearchStrategy[object]:
    entry = field.message_type
    scalar = _plausible if mode in (PLAUSIBLE, SPARSE) else _hostile
    if entry is not None and entry.GetOptions().map_entry:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return st.dictionaries(scalar(key, ids), scalar(value, ids), max_size=4)
    one = _message(entry, ids, mode, depth + 1) if entry is not None else scalar(field, ids)
    if not field.is_repeated:
        return one
    if mode == MIXED:  # valid elements, then the one hostile element
        fine = _message(entry, ids, PLAUSIBLE, depth + 1) if entry is not None else _plausible(field, ids)
        return st.tuples(st.lists(fine, max_size=4), one).map(lambda t: [*t[0], t[1]])
    return st.lists(one, min_size=int(mode == PLAUSIBLE), max_size=4 if depth else 10)


def _message(desc: descriptor.Descriptor, ids: st.SearchStrategy[str], mode: str,
             depth: int = 0) -> st.SearchStrategy[Message]:
    """An instance of `desc` generated in `mode` (see HOSTILE, PLAUSIBLE, MIXED)."""
    cls = message_factory.GetMessageClass(desc)
    fields = list(desc.fields)
    if desc.full_name == "google.protobuf.Timestamp" and mode in (PLAUSIBLE, SPARSE):
        return st.builds(cls, seconds=st.integers(NOW - 30 * 86_400, NOW), nanos=st.integers(0, 999_999_999))
    if not fields:
        return st.just(cls())
    if mode in (HOSTILE, SPARSE):
        kwargs = st.fixed_dictionaries({}, optional={f.name: _field(f, ids, mode, depth) for f in fields})
    elif mode == PLAUSIBLE:
        kwargs = st.fixed_dictionaries({f.name: _field(f, ids, PLAUSIBLE, depth) for f in fields})
    else:
        kwargs = st.sampled_from(fields).flatmap(lambda bad: st.fixed_dictionaries(
            {f.name: _field(f, ids, MIXED if f is bad else PLAUSIBLE, depth) for f in fields}))
    return kwargs.map(lambda kw: cls(**kw))


def _serialise(msg: Message) -> bytes:
    marker = BAD_UTF8_MARKER.encode()
    return msg.SerializeToString().replace(marker, b"\xff" * len(marker))


def _bodies(method: descriptor.MethodDescriptor, ids: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """A plausible request (all or some fields), one with a hostile field, an all-hostile one, random bytes,
    another RPC's request (wrong types on the wire), or a plausible request with bytes overwritten."""
    def own(mode: str) -> st.SearchStrategy[bytes]:
        return _message(method.input_type, ids, mode).map(_serialise)

    other = st.sampled_from(list(METHODS.values())).flatmap(
        lambda m: _message(m.input_type, ids, HOSTILE)).map(_serialise)
    flipped = st.tuples(own(PLAUSIBLE), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                 min_size=1, max_size=4)).map(_flip)
    return st.one_of(own(PLAUSIBLE), own(SPARSE), own(MIXED), own(MIXED), own(HOSTILE), st.binary(max_size=256),
                     other, flipped)


def _flip(drawn: tuple[bytes, list[tuple[int, int]]]) -> bytes:
    body, flips = bytearray(drawn[0]), drawn[1]
    for position, value in flips:
        if body:
            body[position % len(body)] = value
    return bytes(body)


def _assert_deliberate(call: Callable[[], object], what: str) -> None:
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() not in FORBIDDEN, f"{what}: {exc.code().name}: {exc.details()}"


def _assert_serving(server: RunningServer, member: str) -> None:
    stub = recommendation_pb2_grpc.RecommendationServiceStub(server.channel)
    request = recommendation_pb2.RecommendRequest(member_id=member, channel=common_pb2.CHANNEL_APP, k=5)
    assert len(stub.Recommend(request, metadata=MD, timeout=10).items.item_ids) == 5


def test_random_and_hostile_requests_never_answer_unknown_or_internal(server: RunningServer, known_member: str,
                                                                     item_id: str, store_id: str) -> None:
    # Real names too (a known member, a popular item and its category, a stocked store, an offer, a tier, a
    # stage), so plausible requests get past validation and reach the deep paths.
    offers = [o.id for o in load_catalogue(server.config.offers.catalogue_path).offers]
    ids = st.sampled_from([known_member, item_id, server.category(item_id).split("/")[0], store_id, "online",
                           offers[0], offers[-1], "gold", "active", "m-new", "i-unknown", "coupon-x"])

    @settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(METHODS)), label="method")
        body = data.draw(_bodies(METHODS[path], ids), label="body")
        metadata = data.draw(CALLERS, label="metadata")
        _assert_deliberate(lambda: call_raw(server.channel, path, body, metadata), path)

    fuzz()
    _assert_serving(server, known_member)


VALID: dict[str, dict[str, object]] = {
    "omnirec.v1.Event": {"event_id": "huge-{i}", "member_id": "{member}", "item_id": "{item}",
                         "channel": common_pb2.CHANNEL_APP, "event_type": events_pb2.EVENT_TYPE_VIEW}}
"""Valid elements for repeated message fields, so a huge list is judged on its size, not its first element."""


@pytest.mark.parametrize("size", [1_000, 100_000])
def test_huge_repeated_fields_are_refused_or_answered(server: RunningServer, known_member: str, item_id: str,
                                                      size: int) -> None:
    """Every repeated field of every request filled with `size` values; above the server's 4 MiB receive
    limit grpc answers RESOURCE_EXHAUSTED before any handler runs."""
    for path, method in METHODS.items():
        cls = message_factory.GetMessageClass(method.input_type)
        request = cls()
        for field in method.input_type.fields:
            if not field.is_repeated or (field.message_type and field.message_type.GetOptions().map_entry):
                continue
            target = getattr(request, field.name)
            if field.message_type is None:
                target.extend([item_id] * size if field.type == _T.TYPE_STRING else [1] * size)
            else:
                template = VALID.get(field.message_type.full_name, {})
                for i in range(size):
                    target.add(**{k: v.format(i=i, member=known_member, item=item_id) if isinstance(v, str) else v
                                  for k, v in template.items()})
        body = request.SerializeToString()
        _assert_deliberate(lambda p=path, b=body: call_raw(server.channel, p, b, MD, timeout=30), path)
    _assert_serving(server, known_member)
