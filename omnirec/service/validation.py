"""Request checks shared by every servicer (recommendations, events, offers): proto values -> domain values.

Each check raises `domain.errors.InvalidArgument` naming the field, so the error interceptor answers
INVALID_ARGUMENT with a message that starts with that field, as the contract promises.
"""

from __future__ import annotations

import grpc

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


DEADLINE_SHARE = 0.8
"""Share of the caller's remaining time a blocking step may use; the rest is kept to build the answer."""


def time_budget(context: grpc.aio.ServicerContext, default_s: float) -> float:
    """Seconds the next blocking step may take: most of what is left of the caller's deadline, at most
    `default_s` (also the budget when the caller set no deadline), so a degraded answer still arrives in time."""
    remaining = context.time_remaining()
    return default_s if remaining is None else max(0.0, min(remaining * DEADLINE_SHARE, default_s))
