"""The one clock of the batch jobs: `as_of`, the time lifecycle, recency and RFM are computed at.

Defaults to now; a historical data set is replayed by setting it (config `as_of`, or `--as-of`) to the
end of its history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from omnirec.domain.errors import InvalidArgument

log = logging.getLogger(__name__)
DAY = 86_400
"""Seconds in a day: the one definition."""
STALE_DAYS = 30
"""A newest event further than this before as_of is worth a warning: stages and recency will look old."""


def parse_time(value: str, field: str) -> datetime:
    """ISO 8601 date or date-time (UTC unless it names a zone), or unix seconds."""
    text = value.strip()
    try:
        if text.lstrip("-").replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), UTC)
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument(field, f"{value!r} is not an ISO 8601 date/time or unix seconds") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def as_of_ts(as_of: datetime | None) -> float:
    """Unix seconds of `as_of`, now when unset."""
    return (as_of or datetime.now(UTC)).timestamp()


def clock_at(as_of: datetime | None) -> Callable[[], float]:
    """The service's clock: standing still at `as_of` when one is set (replaying a history), else wall time."""
    if as_of is None:
        return time.time
    ts = as_of.timestamp()
    return lambda: ts


def stale_data_warning(newest_event_ts: float, as_of: float, job: str) -> str | None:
    """A warning (also logged) when the newest event is far older than as_of, else None."""
    days = (as_of - newest_event_ts) / DAY
    if days <= STALE_DAYS:
        return None
    newest = datetime.fromtimestamp(newest_event_ts, UTC)
    message = (f"{job}: the newest event ({newest:%Y-%m-%d}) is {days:,.0f} days before as_of "
               f"({datetime.fromtimestamp(as_of, UTC):%Y-%m-%d}); lifecycle stages and recency are computed at "
               f"as_of. To replay this history, pass --as-of {newest:%Y-%m-%dT%H:%M:%S} (or set as_of in the config)")
    log.warning(message)
    return message
