"""Request checks shared by every servicer (recommendations, events, offers): proto values -> domain values.

Each check raises `domain.errors.InvalidArgument` naming the field, so the error interceptor answers
INVALID_ARGUMENT with a message that starts with that field, as the contract promises.
"""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2

from omnirec.domain.errors import InvalidArgument
from omnirec.domain.vocab import Channel, StoreId
from omnirec.v1 import common_pb2

MAX_K = 200
"""Upper bound of `k` on the recommendation RPCs (see recommendation.proto)."""

_CHANNELS: dict[int, Channel] = {
    common_pb2.CHANNEL_APP: Channel.APP,
    common_pb2.CHANNEL_MINI_PROGRAM: Channel.MINI_PROGRAM,
    common_pb2.CHANNEL_WEB: Channel.WEB,
    common_pb2.CHANNEL_POS: Channel.POS,
    common_pb2.CHANNEL_STORE: Channel.STORE,
}


def channel(value: int, field: str = "channel") -> Channel:
    """The domain channel for a proto enum value; unspecified or unknown numbers are refused."""
    try:
        return _CHANNELS[value]
    except KeyError:
        raise InvalidArgument(field, f"unknown or unspecified channel ({value}); set one of "
                                     f"{', '.join(common_pb2.Channel.keys()[1:])}") from None


def k(value: int, field: str = "k", upper: int = MAX_K) -> int:
    if not 1 <= value <= upper:
        raise InvalidArgument(field, f"must be between 1 and {upper} (got {value})")
    return value


def store(value: str, ch: Channel, field: str = "store_id") -> StoreId | None:
    """The store id, required for POS and store channels; None when absent elsewhere."""
    if ch.is_physical and not value:
        raise InvalidArgument(field, f"required for channel {ch.value}")
    return value or None


def required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(field, "required")
    return value


def one_of(first: str, second: str, first_field: str, second_field: str) -> None:
    """At least one of two ids (e.g. member_id or anonymous_id) must be set."""
    if not first and not second:
        raise InvalidArgument(first_field, f"set {first_field} or {second_field}")


MINOR_UNITS_PER_MAJOR = 100
"""Money travels as integer minor units (cents); the domain (offers, points, the event log) computes in major units."""


def money(minor_units: int, field: str) -> float:
    """A non-negative amount in minor units, as the domain's major units (1999 -> 19.99)."""
    if minor_units < 0:
        raise InvalidArgument(field, f"must be >= 0 minor units (got {minor_units})")
    return minor_units / MINOR_UNITS_PER_MAJOR


def unix_seconds(value: timestamp_pb2.Timestamp, field: str) -> int:
    """A Timestamp as whole unix seconds (the event log's resolution); nanos outside 0..999,999,999 are refused."""
    if not 0 <= value.nanos < 1_000_000_000:
        raise InvalidArgument(field, f"nanos must be in 0..999999999 (got {value.nanos})")
    if value.seconds < 0:
        raise InvalidArgument(field, f"must not be before 1970-01-01 (got {value.seconds} s)")
    return value.seconds


DEADLINE_SHARE = 0.8
"""Share of the caller's remaining time a blocking step may use; the rest is kept to build the answer."""


def time_budget(context: grpc.aio.ServicerContext, default_s: float) -> float:
    """Seconds the next blocking step may take: most of what is left of the caller's deadline, at most
    `default_s` (also the budget when the caller set no deadline), so a degraded answer still arrives in time."""
    remaining = context.time_remaining()
    return default_s if remaining is None else max(0.0, min(remaining * DEADLINE_SHARE, default_s))
