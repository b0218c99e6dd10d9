"""The one request-validation layer: proto values -> domain values, the same rules for every RPC.

Each check raises `domain.errors.InvalidArgument` naming the field in the documented form (`member_id`,
`events[3].price`, `basket_item_ids[0]`), so the error interceptor answers INVALID_ARGUMENT with a message
that starts with that field. Nothing is written before a request has passed every check. The bounds are
part of the public contract (protos' comments, README "Request bounds"):

- ids (`*_id`, `category`): at most `MAX_ID_CHARS` characters, no control characters (the feature store
  packs ids with ASCII separators); required ids must be non-empty;
- free text (context keys and values): at most `MAX_TEXT_CHARS` characters, no control characters;
- money (`*_minor_units`: price, basket and order value): 0..`MAX_MONEY_MINOR` (1,000,000.00);
- `quantity`: 0..`MAX_QUANTITY`; `k`: 1..200 (recommendations) or 1..20 (offers); repeated ids: at most
  `MAX_LIST` entries;
- `event_time`: at most `max_clock_skew_s` ahead of the server and at most `max_event_age_s` old (unset
  means "now"), so milliseconds sent as seconds or a far future never reach the log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

import grpc
from google.protobuf import timestamp_pb2

from omnirec.domain.clock import DAY
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.vocab import Channel, Intent, StoreId
from omnirec.v1 import common_pb2, recommendation_pb2

MAX_K = 200
"""Upper bound of `k` on the recommendation RPCs (see recommendation.proto)."""
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 256
MAX_LIST = 200
"""Most ids in a repeated id field (`basket_item_ids`) and entries in a map (`context`)."""
MAX_MONEY_MINOR = 100_000_000
"""Largest unit price, basket or order value: 1,000,000.00 in minor units (cents)."""
MAX_QUANTITY = 1_000

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
T = TypeVar("T")

_CHANNELS: dict[int, Channel] = {
    common_pb2.CHANNEL_APP: Channel.APP,
    common_pb2.CHANNEL_MINI_PROGRAM: Channel.MINI_PROGRAM,
    common_pb2.CHANNEL_WEB: Channel.WEB,
    common_pb2.CHANNEL_POS: Channel.POS,
    common_pb2.CHANNEL_STORE: Channel.STORE,
}


def _member(table: dict[int, T], value: int, field: str, problem: str, names: list[str]) -> T:
    """A proto enum number's domain value; the refusal lists the names a client may send."""
    try:
        return table[value]
    except KeyError:
        raise InvalidArgument(field, f"{problem} ({value}); set one of {', '.join(names)}") from None


def channel(value: int, field: str = "channel") -> Channel:
    """The domain channel for a proto enum value; unspecified or unknown numbers are refused."""
    return _member(_CHANNELS, value, field, "unknown or unspecified channel", common_pb2.Channel.keys()[1:])


_INTENTS: dict[int, Intent] = {
    recommendation_pb2.INTENT_UNSPECIFIED: Intent.MIXED,
    recommendation_pb2.INTENT_MIXED: Intent.MIXED,
    recommendation_pb2.INTENT_BUY_AGAIN: Intent.BUY_AGAIN,
    recommendation_pb2.INTENT_DISCOVER: Intent.DISCOVER,
}


def intent(value: int, field: str = "intent") -> Intent:
    """The domain intent for a proto enum value; unspecified is MIXED, an unknown number is refused."""
    return _member(_INTENTS, value, field, "unknown intent", recommendation_pb2.Intent.keys())


def k(value: int, field: str = "k", upper: int = MAX_K) -> int:
    if not 1 <= value <= upper:
        raise InvalidArgument(field, f"must be between 1 and {upper} (got {value})")
    return value


def text(value: str, field: str, limit: int = MAX_TEXT_CHARS) -> str:
    """A string of at most `limit` characters without control characters (empty allowed)."""
    if len(value) > limit:
        raise InvalidArgument(field, f"at most {limit} characters (got {len(value)})")
    bad = _CONTROL.search(value)
    if bad:
        raise InvalidArgument(field, f"must not contain control characters (found {bad.group()!r} at {bad.start()})")
    return value


def optional_id(value: str, field: str) -> str | None:
    """An id that may be absent: None when empty."""
    return text(value, field, MAX_ID_CHARS) or None


def required(value: str, field: str) -> str:
    """An id that must be present."""
    if not value:
        raise InvalidArgument(field, "required")
    return text(value, field, MAX_ID_CHARS)


def one_of(first: str, second: str, first_field: str, second_field: str) -> tuple[str | None, str | None]:
    """Two ids of which at least one (e.g. member_id or anonymous_id) must be set."""
    if not first and not second:
        raise InvalidArgument(first_field, f"set {first_field} or {second_field}")
    return optional_id(first, first_field), optional_id(second, second_field)


def store(value: str, ch: Channel, field: str = "store_id") -> StoreId | None:
    """The store id, required for POS and store channels; None when absent elsewhere."""
    if ch.is_physical and not value:
        raise InvalidArgument(field, f"required for channel {ch.value}")
    return optional_id(value, field)


def id_list(values: Sequence[str], field: str, min_len: int = 0, max_len: int = MAX_LIST) -> list[str]:
    """A repeated id field: `min_len`..`max_len` non-empty ids, named `field[i]`."""
    if not min_len <= len(values) <= max_len:
        raise InvalidArgument(field, f"send {min_len}..{max_len} ids (got {len(values)})")
    return [required(v, f"{field}[{i}]") for i, v in enumerate(values)]


def text_map(values: Mapping[str, str], field: str) -> dict[str, str]:
    """A free-form string map of at most `MAX_LIST` entries, keys and values checked as `text`."""
    if len(values) > MAX_LIST:
        raise InvalidArgument(field, f"at most {MAX_LIST} entries (got {len(values)})")
    return {text(key, f"{field}[{key[:32]!r}]"): text(value, f"{field}[{key[:32]!r}]") for key, value in values.items()}


def quantity(value: int, field: str) -> int:
    if not 0 <= value <= MAX_QUANTITY:
        raise InvalidArgument(field, f"must be between 0 and {MAX_QUANTITY} (got {value})")
    return value


MINOR_UNITS_PER_MAJOR = 100
"""Money travels as integer minor units (cents); the domain (offers, points, the event log) computes in major units."""


def money(minor_units: int, field: str) -> float:
    """An amount in minor units, 0..`MAX_MONEY_MINOR`, as the domain's major units (1999 -> 19.99)."""
    if not 0 <= minor_units <= MAX_MONEY_MINOR:
        raise InvalidArgument(field, f"must be between 0 and {MAX_MONEY_MINOR} minor units (got {minor_units})")
    return minor_units / MINOR_UNITS_PER_MAJOR


MAX_TIMESTAMP_S = 253_402_300_799
"""9999-12-31T23:59:59Z, the last second a google.protobuf.Timestamp may hold."""


def _nanos(value: timestamp_pb2.Timestamp, field: str) -> None:
    if not 0 <= value.nanos < 1_000_000_000:
        raise InvalidArgument(field, f"nanos must be in 0..999999999 (got {value.nanos})")


def unix_seconds(value: timestamp_pb2.Timestamp, field: str) -> int:
    """A Timestamp as whole unix seconds, within 1970..9999 and with nanos in 0..999,999,999 as the
    Timestamp contract requires; anything else is the caller's error."""
    _nanos(value, field)
    if not 0 <= value.seconds <= MAX_TIMESTAMP_S:
        raise InvalidArgument(field, f"seconds must be in 0..{MAX_TIMESTAMP_S} (1970..9999; got {value.seconds})")
    return value.seconds


def event_time(value: timestamp_pb2.Timestamp | None, field: str, now: int, max_skew_s: float,
               max_age_s: float) -> int:
    """A Timestamp as whole unix seconds (the event log's resolution), no more than `max_skew_s` ahead of `now`
    nor `max_age_s` behind it; unset means `now`."""
    if value is None:
        return now
    _nanos(value, field)
    if value.seconds > now + max_skew_s:
        hint = " (milliseconds sent as seconds?)" if value.seconds > 100 * now else ""
        raise InvalidArgument(field, f"at most {max_skew_s:.0f}s ahead of the server's clock ({now} s){hint} "
                                     f"(got {value.seconds} s)")
    if value.seconds < now - max_age_s:
        raise InvalidArgument(field, f"older than {max_age_s / DAY:g} days (server time {now} s; "
                                     f"got {value.seconds} s)")
    return value.seconds


DEADLINE_SHARE = 0.8
"""Share of the caller's remaining time a blocking step may use; the rest is kept to build the answer."""


def time_budget(context: grpc.aio.ServicerContext, default_s: float) -> float:
    """Seconds the next blocking step may take: most of what is left of the caller's deadline, at most
    `default_s` (also the budget when the caller set no deadline), so a degraded answer still arrives in time."""
    remaining = context.time_remaining()
    return default_s if remaining is None else max(0.0, min(remaining * DEADLINE_SHARE, default_s))
