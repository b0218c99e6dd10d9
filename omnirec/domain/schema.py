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


PROMOTION_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("store_id", pa.string(), nullable=False),
        pa.field("start_ts", pa.int64(), nullable=False),
        pa.field("end_ts", pa.int64(), nullable=False),
        pa.field("display", pa.bool_(), nullable=False),
        pa.field("mailer", pa.bool_(), nullable=False),
    ]
)
"""A planned promotion: the item on display in the store and/or in its mailer from `start_ts` (unix s,
inclusive) to `end_ts` (exclusive). Optional (`promotions.parquet`); the ranker reads the promotions of the
week it predicts, which a retailer plans in advance."""


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


PROMOTION_IDS = pa.dictionary(pa.int32(), pa.string())
"""How `check_promotions` returns the id columns: a large table names few items and stores, so codes into
their distinct values keep it small (Complete Journey: 20.9M rows, 59,800 items, 112 stores)."""


def _dictionary_ids(column: pa.ChunkedArray, path: str, field: str) -> pa.ChunkedArray:
    """The column as one `PROMOTION_IDS` array; an empty id or one with a control character is an error."""
    if pa.types.is_dictionary(column.type):
        array = pa.table({field: column}).unify_dictionaries()[field].combine_chunks()
    else:
        array = pc.dictionary_encode(pc.cast(column.combine_chunks(), pa.string()))
    array = array.cast(PROMOTION_IDS)
    values = array.dictionary
    bad = pc.or_(pc.equal(pc.utf8_trim_whitespace(values), ""),
                 pc.fill_null(pc.match_substring_regex(values, _CONTROL), False))
    codes = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
    if codes.size:
        row = _first_bad(pc.is_in(array.indices, value_set=pa.array(codes, pa.int32())))
        raise DataError(path, (row or 0) + 1, field, "ids must not be empty or contain control characters")
    return pa.chunked_array([array])


def check_promotions(table: pa.Table, path: str) -> pa.Table:
    """Validate a promotions table (`PROMOTION_SCHEMA`): the first bad row raises `DataError` naming file,
    row and field. Ids come back dictionary-encoded (`PROMOTION_IDS`), everything else as in the schema."""
    for f in PROMOTION_SCHEMA:
        if f.name not in table.column_names:
            raise DataError(path, 0, f.name, "column missing from the file")
        row = _first_bad(table[f.name].is_null())
        if row is not None:
            raise DataError(path, row + 1, f.name, "required value is empty")
    columns = {}
    for f in PROMOTION_SCHEMA:
        if f.name in ("item_id", "store_id"):
            columns[f.name] = _dictionary_ids(table[f.name], path, f.name)
            continue
        try:
            columns[f.name] = table[f.name].cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(path, 0, f.name, f"cannot read as {f.type}: {exc}") from exc
    out = pa.table(columns)
    row = _first_bad(pc.less(out["start_ts"], 0))
    if row is not None:
        raise DataError(path, row + 1, "start_ts", "must be unix seconds >= 0")
    row = _first_bad(pc.less_equal(out["end_ts"], out["start_ts"]))
    if row is not None:
        raise DataError(path, row + 1, "end_ts", "must be after start_ts")
    return out
