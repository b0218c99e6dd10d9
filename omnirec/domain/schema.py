"""Arrow schemas of the event log and entity tables, and the row checks every reader applies.

The event log is the contract between the simulator (or a retailer's export), training and the
materialisation job; see the README's "Event log" section.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omnirec.domain.errors import DataError
from omnirec.domain.vocab import Channel, Col, EventType

EVENT_SCHEMA = pa.schema(
    [
        pa.field(Col.MEMBER_ID, pa.string()),
        pa.field(Col.ANONYMOUS_ID, pa.string()),
        pa.field(Col.ITEM_ID, pa.string()),
        pa.field(Col.CHANNEL, pa.string(), nullable=False),
        pa.field(Col.EVENT_TYPE, pa.string(), nullable=False),
        pa.field(Col.STORE_ID, pa.string()),
        pa.field(Col.QUANTITY, pa.int32(), nullable=False),
        pa.field(Col.PRICE, pa.float64(), nullable=False),
        pa.field(Col.TS, pa.int64(), nullable=False),
    ]
)
"""One row per behaviour event. `ts` is unix seconds; `price` is the unit price paid (0 if none)."""

EVENT_ID = "event_id"
LIVE_EVENT_SCHEMA = EVENT_SCHEMA.append(pa.field(EVENT_ID, pa.string(), nullable=False))
"""The service's event log (`events_live/`): the event schema plus the caller's `event_id`, so a reader keeps
one row per event even where a crash between logging and applying made a retry log it twice."""

MEMBER_SCHEMA = pa.schema(
    [
        pa.field("member_id", pa.string(), nullable=False),
        pa.field("signup_ts", pa.int64(), nullable=False),
        pa.field("home_store", pa.string(), nullable=False),
        pa.field("region", pa.string(), nullable=False),
        pa.field("points", pa.int64(), nullable=False),
        pa.field("tier", pa.string(), nullable=False),
        pa.field("lifecycle_stage", pa.string(), nullable=False),
        pa.field("channel_habit", pa.string(), nullable=False),
        *(pa.field(f"consent_{c.value}", pa.bool_(), nullable=False) for c in Channel),
    ]
)

ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("brand", pa.string(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("price_band", pa.string(), nullable=False),
        pa.field("attributes", pa.list_(pa.string()), nullable=False),
    ]
)
"""`category` is a path such as "home/kitchen"; `attributes` are "key:value" tags."""

STORE_SCHEMA = pa.schema(
    [
        pa.field("store_id", pa.string(), nullable=False),
        pa.field("region", pa.string(), nullable=False),
    ]
)

INVENTORY_SCHEMA = pa.schema(
    [
        pa.field("store_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("quantity", pa.int32(), nullable=False),
    ]
)
"""Stock on hand; store id "online" holds the stock that app, mini-program and web sell from."""

IDENTITY_SCHEMA = pa.schema(
    [
        pa.field("anonymous_id", pa.string(), nullable=False),
        pa.field("member_id", pa.string(), nullable=False),
    ]
)
"""A device, cookie or app id that a login tied to a member: the export's `identity_links.parquet` and the
service's live link log (later rows win)."""


ID_COLUMNS = (Col.MEMBER_ID, Col.ANONYMOUS_ID, Col.ITEM_ID, Col.STORE_ID, "home_store")
"""Identifier columns: printable text only, because the feature store packs ids with ASCII control
characters as separators (`feature_store/FORMAT.md`)."""
_CONTROL = r"[\x00-\x1f\x7f]"


def _first_bad(mask: pa.Array | np.ndarray) -> int | None:
    arr = np.asarray(mask.to_numpy(zero_copy_only=False) if isinstance(mask, pa.Array | pa.ChunkedArray) else mask)
    bad = np.flatnonzero(arr)
    return int(bad[0]) if bad.size else None


def check_events(table: pa.Table, path: str, first_line: int = 1) -> pa.Table:
    """Cast to `EVENT_SCHEMA` and reject the first malformed row, naming file, line and field.

    `first_line` is the line number of row 0 in the source file (2 for a CSV with a header).
    """
    missing = [f.name for f in EVENT_SCHEMA if f.name not in table.column_names]
    if missing:
        raise DataError(path, 0, missing[0], "column missing from the file")
    unknown = [c for c in table.column_names if c not in EVENT_SCHEMA.names]
    if unknown:
        raise DataError(path, 0, unknown[0], f"unknown column; expected {EVENT_SCHEMA.names}")
    try:
        table = table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(path, 0, "?", f"cannot cast to the event schema: {exc}") from exc

    def fail(mask: pa.Array, field: str, message: str) -> None:
        row = _first_bad(pc.fill_null(mask, True))
        if row is not None:
            value = table.column(field)[row].as_py()
            raise DataError(path, first_line + row, field, f"{message} (got {value!r})")

    fail(pc.invert(pc.is_in(table[Col.CHANNEL], pa.array([c.value for c in Channel]))), Col.CHANNEL,
         "unknown channel")
    fail(pc.invert(pc.is_in(table[Col.EVENT_TYPE], pa.array([e.value for e in EventType]))), Col.EVENT_TYPE,
         "unknown event type")
    no_member = pc.and_kleene(pc.is_null(table[Col.MEMBER_ID]), pc.is_null(table[Col.ANONYMOUS_ID]))
    fail(no_member, Col.MEMBER_ID, "neither member_id nor anonymous_id is set")
    needs_item = pc.not_equal(table[Col.EVENT_TYPE], EventType.STORE_VISIT.value)
    fail(pc.and_kleene(needs_item, pc.or_kleene(pc.is_null(table[Col.ITEM_ID]), pc.equal(table[Col.ITEM_ID], ""))),
         Col.ITEM_ID, "required for this event type")
    physical = pc.is_in(table[Col.CHANNEL], pa.array([c.value for c in Channel if c.is_physical]))
    fail(pc.and_kleene(physical, pc.is_null(table[Col.STORE_ID])), Col.STORE_ID, "required for pos and store events")
    fail(pc.less(table[Col.QUANTITY], 0), Col.QUANTITY, "must be >= 0")
    price = table[Col.PRICE]
    fail(pc.or_kleene(pc.less(price, 0), pc.invert(pc.is_finite(price))), Col.PRICE, "must be a finite number >= 0")
    fail(pc.less(table[Col.TS], 0), Col.TS, "must be unix seconds >= 0")
    for col in (Col.MEMBER_ID, Col.ANONYMOUS_ID, Col.ITEM_ID, Col.STORE_ID):
        fail(pc.fill_null(pc.match_substring_regex(table[col], _CONTROL), False), col,
             "ids must not contain control characters")
    return table


def check_required(table: pa.Table, schema: pa.Schema, path: str) -> pa.Table:
    """Cast an entity table to its schema; null or missing required fields are errors, not drops."""
    for f in schema:
        if f.name not in table.column_names:
            raise DataError(path, 0, f.name, "column missing from the file")
        if not f.nullable:
            row = _first_bad(table[f.name].is_null())
            if row is not None:
                raise DataError(path, row + 1, f.name, "required value is empty")
    table = table.select(schema.names).cast(schema)
    for name in set(ID_COLUMNS) & set(schema.names):
        row = _first_bad(pc.fill_null(pc.match_substring_regex(table[name], _CONTROL), False))
        if row is not None:
            raise DataError(path, row + 1, name, "ids must not contain control characters")
    return table
