"""`omnirec import`: a retailer's export + a mapping file -> omnirec's data directory, checked.

Each input table is read as it is (`importer.source`), parsed column by column with every bad value
reported, de-duplicated, joined against the item file, completed with derived values
(`domain.derive`) and written as the Parquet files `domain.readers.RetailData` reads. The result is then
read back through `RetailData.read`, exactly as `train` and `materialize` will read it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omnirec.domain.clock import stale_data_warning
from omnirec.domain.derive import complete_items, complete_members
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.readers import (
    EVENTS_FILE,
    IDENTITY_FILE,
    INVENTORY_FILE,
    ITEMS_FILE,
    MEMBERS_FILE,
    PROMOTIONS_FILE,
    STORES_FILE,
    RetailData,
)
from omnirec.domain.schema import (
    EVENT_SCHEMA,
    IDENTITY_SCHEMA,
    INVENTORY_SCHEMA,
    PROMOTION_IDS,
    PROMOTION_SCHEMA,
    STORE_SCHEMA,
)
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, Col, EventType
from omnirec.importer.mapping import (
    EventsMapping,
    IdentityMapping,
    InventoryMapping,
    ItemsMapping,
    Mapping,
    MembersMapping,
    PromotionsMapping,
    Section,
    StoresMapping,
)
from omnirec.importer.report import ImportReport
from omnirec.importer.source import Distinct, Source, _as_iso, _np

log = logging.getLogger(__name__)
REPORT_FILE = "import_report.json"
"""Written into the data directory by every import; its presence marks the folder as an import's output."""
_OWNED = (EVENTS_FILE, ITEMS_FILE, MEMBERS_FILE, STORES_FILE, INVENTORY_FILE, IDENTITY_FILE, PROMOTIONS_FILE,
          REPORT_FILE)
PROMOTION_FILE_SCHEMA = pa.schema([f.with_type(PROMOTION_IDS) if f.name in ("item_id", "store_id") else f
                                   for f in PROMOTION_SCHEMA])
"""How the import writes `promotions.parquet`: `PROMOTION_SCHEMA` with the ids as `PROMOTION_IDS`, which is
how they are parsed and how `read_promotions` returns them (decoding 20.9M ids to write them costs 400 MB);
in the file they are string columns either way."""
PROMOTIONS_AHEAD = timedelta(days=366)
"""Promotions are planned ahead: one starting later than this after as_of is rejected as implausible."""


class ImportFailed(InvalidArgument):
    """The import found problems and wrote nothing (strict mode, or nothing usable was left)."""

    def __init__(self, message: str, report: ImportReport) -> None:
        super().__init__("import", message)
        self.report = report


@dataclass(frozen=True)
class ImportResult:
    out_dir: Path
    report: ImportReport
    events: int
    members: int
    items: int
    newest_event: datetime
    seconds: float


def import_data(mapping: Mapping, source_dir: Path, out_dir: Path, tiers: TierLadder, rules: LifecycleRules,
                as_of: datetime | None = None, strict: bool = False, force: bool = False) -> ImportResult:
    """Read, check, complete and write; raise `ImportFailed` (writing nothing) when strict and anything failed."""
    started = time.perf_counter()
    as_of = as_of or datetime.now(UTC)
    checks = mapping.checks
    report = ImportReport(max_errors=checks.max_errors)
    earliest = datetime.fromisoformat(checks.earliest).replace(tzinfo=UTC)
    latest = as_of + timedelta(hours=checks.future_slack_hours)
    _check_out_dir(out_dir, force)

    events_src = _open("events", mapping.events, source_dir, report)
    events = _events(events_src, mapping.events, earliest, latest)
    items_src = _open("items", mapping.items, source_dir, report)
    items = _items(items_src, mapping.items)

    known = _np(pc.is_in(events[Col.ITEM_ID], value_set=items["item_id"])) | _np(events[Col.ITEM_ID].is_null())
    unknown = ~known & ~events_src.bad
    if checks.unknown_items == "reject":
        events_src.reject(unknown, "item_id", "not in the item file", events[Col.ITEM_ID])
    events = _keep(events_src, events, checks.duplicates == "drop")
    items_table, added = complete_items(items, events, add_unknown=checks.unknown_items == "add")
    if added:
        items_src.stats.notes.append(f"{added:,} items named only by events added with category 'unknown' "
                                     f"({int(unknown.sum()):,} events)")

    stores = _stores(_open("stores", mapping.stores, source_dir, report), mapping.stores) if mapping.stores else None
    if stores is None:
        seen = pc.unique(events[Col.STORE_ID].drop_null())
        stores = pa.table({"store_id": seen, "region": pa.array([""] * len(seen), pa.string())}, schema=STORE_SCHEMA)
    inventory = (_inventory(_open("inventory", mapping.inventory, source_dir, report), mapping.inventory)
                 if mapping.inventory else INVENTORY_SCHEMA.empty_table())
    links = (_links(_open("identity_links", mapping.identity_links, source_dir, report), mapping.identity_links)
             if mapping.identity_links else IDENTITY_SCHEMA.empty_table())
    given = None
    if mapping.members:
        members_src = _open("members", mapping.members, source_dir, report)
        given = _keep(members_src, _members(members_src, mapping.members, earliest, latest),
                      checks.duplicates == "drop", unique="member_id")
    members = complete_members(events, stores, tiers, rules, as_of.timestamp(), mapping.derive.points_per_currency,
                               given)
    promotions = None
    if mapping.promotions:
        promotions_src = Source.read("promotions", source_dir / mapping.promotions.path, report,
                                     mapping.promotions.delimiter, promotion_columns(mapping.promotions), encode=True)
        promotions = _keep(promotions_src, promotions_table(promotions_src, mapping.promotions, items_table["item_id"],
                                                            earliest, as_of + PROMOTIONS_AHEAD),
                           checks.duplicates == "drop").cast(PROMOTION_FILE_SCHEMA)
        del promotions_src

    if strict and report.problems:
        raise ImportFailed(f"{report.problems:,} problems found; nothing written (strict)", report)
    if events.num_rows == 0:
        raise ImportFailed("no event passed the checks; nothing written", report)
    tables = {EVENTS_FILE: events, ITEMS_FILE: items_table, MEMBERS_FILE: members, STORES_FILE: stores,
              INVENTORY_FILE: inventory, IDENTITY_FILE: links}
    if promotions is not None:
        tables[PROMOTIONS_FILE] = promotions
    newest = datetime.fromtimestamp(pc.max(events[Col.TS]).as_py(), UTC)
    stale = stale_data_warning(newest.timestamp(), as_of.timestamp(), "import")
    if stale:
        report.warnings.append(stale)
    _write(out_dir, tables, report)
    # The read-back below (Complete Journey's 20.9M promotions among it) need not sit beside what was written.
    del tables, events, events_src, items, items_src, items_table, members, promotions
    data = RetailData.read(out_dir, promotions=True)
    data.interactions()
    return ImportResult(out_dir, report, data.events.num_rows, data.members.num_rows, data.items.num_rows, newest,
                        time.perf_counter() - started)


def _check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse to mix an import with other files (a simulator run, say) unless told to."""
    if force or not out_dir.exists() or (out_dir / REPORT_FILE).exists():
        return
    others = [p.name for p in out_dir.iterdir()]
    if others:
        raise InvalidArgument("out", f"{out_dir} holds other files ({', '.join(sorted(others)[:3])}...); "
                              "import into an empty folder or pass --force")


def _write(out_dir: Path, tables: dict[str, pa.Table], report: ImportReport) -> None:
    """Each file written beside its final name, then renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".import-") as tmp:
        for name, table in tables.items():
            pq.write_table(table, Path(tmp) / name)
        (Path(tmp) / REPORT_FILE).write_text(json.dumps(_report_json(report), indent=2))
        for name in _OWNED:
            if (Path(tmp) / name).exists():
                os.replace(Path(tmp) / name, out_dir / name)
            else:  # an optional table this mapping does not have: not left over from an earlier import
                (out_dir / name).unlink(missing_ok=True)
    live = out_dir / "events_live"
    if live.exists():
        shutil.rmtree(live)


def _report_json(report: ImportReport) -> dict[str, object]:
    return {
        "problems": report.problems,
        "first_problems": report.lines,
        "warnings": report.warnings,
        "tables": {name: {"path": t.path, "rows_read": t.rows_read, "duplicates": t.duplicates,
                          "duplicates_dropped": t.duplicates_dropped, "rows_rejected": t.rows_rejected,
                          "rejected_by_reason": dict(t.rejected), "rows_written": t.rows_written, "notes": t.notes}
                   for name, t in report.tables.items()},
    }


def _keep(src: Source, table: pa.Table, drop_duplicates: bool, unique: str | None = None) -> pa.Table:
    """Rows that passed every check, minus exact duplicates of an earlier row when they are dropped.

    `unique` names a key column whose later repeats (not exact duplicates) are rejected.
    """
    dup = _duplicates(src.table)
    src.stats.duplicates = int(dup.sum())
    src.stats.duplicates_dropped = drop_duplicates
    drop = dup if drop_duplicates else np.zeros_like(dup)
    if unique is not None:
        repeat = ~drop & ~src.bad & _duplicates(pa.table({unique: table[unique]}), among=~drop & ~src.bad)
        src.reject(repeat, unique, "appears more than once", table[unique])
    keep = ~src.bad & ~drop
    src.stats.rows_rejected = src.stats.rows_read - src.table.num_rows + int((src.bad & ~drop).sum())
    src.stats.rows_written = int(keep.sum())
    return table if keep.all() else table.filter(pa.array(keep))


def _duplicates(table: pa.Table, among: np.ndarray | None = None) -> np.ndarray:
    """True for each row equal in every column to an earlier row (among the rows `among` marks).

    A 64-bit key mixed from each column's dictionary codes finds the rows that may repeat; only those
    are compared exactly (a group-by over every row and column costs several times more, and
    duplicates are rare).
    """
    rows = np.arange(table.num_rows) if among is None else np.flatnonzero(among)
    if among is not None:
        table = table.take(pa.array(rows))
    key = np.zeros(table.num_rows, np.uint64)
    for column in table.columns:
        column = column.combine_chunks()
        encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
        code = pc.fill_null(pc.cast(encoded.indices, pa.int32()), -1).to_numpy(zero_copy_only=False)
        key *= np.uint64(1_000_003)  # in place, codes as uint32 (null: 2^32 - 1): no temporary 8 bytes a row
        np.add(key, code.view(np.uint32), out=key)
    order = np.argsort(key, kind="stable")  # np.unique's inverse and counts would cost 3 more arrays this long
    key = key[order]
    same = key[1:] == key[:-1]
    del key
    repeated = np.zeros(len(order), bool)
    repeated[1:] |= same
    repeated[:-1] |= same
    candidates = np.sort(order[repeated])
    del order
    dup = np.zeros(table.num_rows, bool)
    if candidates.size:
        dup[candidates] = _first_seen(table.take(pa.array(candidates)))
    out = np.zeros(table.num_rows if among is None else len(among), bool)
    out[rows] = dup
    return out


def _first_seen(table: pa.Table) -> np.ndarray:
    """True for each row equal in every column to an earlier row."""
    keyed = table.append_column("__row", pa.array(np.arange(table.num_rows)))
    first = keyed.group_by(table.column_names, use_threads=False).aggregate([("__row", "min")])["__row_min"]
    dup = np.ones(table.num_rows, bool)
    dup[first.to_numpy()] = False
    return dup


def _events(src: Source, m: EventsMapping, earliest: datetime, latest: datetime) -> pa.Table:
    """Parse the event columns; returns a table in `EVENT_SCHEMA` with one row per source row."""
    n = src.table.num_rows
    none = pa.nulls(n, pa.string())
    member = src.text(m.member_id, "member_id", "member_id", is_id=True) if m.member_id else none
    anon = src.text(m.anonymous_id, "anonymous_id", "anonymous_id", is_id=True) if m.anonymous_id else none
    src.reject(_np(pc.and_kleene(member.is_null(), anon.is_null())) & ~src.bad, "member_id",
               "neither member_id nor anonymous_id is set")
    item = src.text(m.item_id, "item_id", "item_id", is_id=True) if m.item_id else none
    store = (src.text(m.store_id, "store_id", "store_id", is_id=True) if m.store_id
             else pa.array([m.constants.get("store_id")] * n, pa.string()))
    channel = _vocab(src, m.channel, m.constants.get("channel"), m.channel_values, Channel, "channel", n)
    kind = _vocab(src, m.event_type, m.constants.get("event_type"), m.event_type_values, EventType, "event_type", n)
    ts = src.time(m.time, m.date, m.time_format, m.timezone, "ts", "time", earliest, latest)

    moves_money = _np(pc.is_in(kind, pa.array([EventType.PURCHASE.value, EventType.RETURN.value])))
    if m.quantity:
        qty = src.number(m.quantity, "quantity", "quantity", integer=True)
        empty = _np(qty.is_null()) & ~src.bad
        src.reject(empty & moves_money, "quantity", "required for purchases and returns")
        qty_np = pc.fill_null(qty, 1).to_numpy().astype(np.int64)
    else:
        qty_np = np.ones(n, np.int64)
    if m.price:
        price = src.number(m.price, "price", "price")
        src.reject(_np(price.is_null()) & moves_money & ~src.bad, "price", "empty price on a purchase or return")
        price_np = pc.fill_null(price, 0.0).to_numpy() * m.currency_unit
    elif moves_money.any():
        raise InvalidArgument("mapping events.price", "the events hold purchases or returns: map price to a column")
    else:
        price_np = np.zeros(n)
    # A negative quantity is how most tills write a return: flip it into a return of a positive quantity.
    refund = qty_np < 0
    kind_np = np.where(refund & (kind.to_numpy(zero_copy_only=False) == EventType.PURCHASE.value),
                       EventType.RETURN.value, kind.to_numpy(zero_copy_only=False).astype(object))
    qty_np = np.abs(qty_np)
    if m.price_is == "line_total":
        price_np = np.abs(price_np)
        zero_qty = (qty_np == 0) & (price_np != 0)
        src.reject(zero_qty & ~src.bad, "quantity", "0 with a non-zero line total: the unit price is undefined")
        price_np = np.divide(price_np, qty_np, out=np.zeros(n), where=qty_np > 0)
    elif refund.any():
        price_np = np.abs(price_np)
    src.reject((price_np < 0) & ~src.bad, "price", "negative price", pa.array(price_np))
    needs_item = kind_np != EventType.STORE_VISIT.value
    src.reject(needs_item & _np(item.is_null()) & ~src.bad, "item_id", "required for this event type")
    physical = _np(pc.is_in(channel, pa.array([c.value for c in Channel if c.is_physical])))
    src.reject(physical & _np(store.is_null()) & ~src.bad, "store_id", "required for pos and store events")
    table = pa.table({
        Col.MEMBER_ID: member, Col.ANONYMOUS_ID: anon, Col.ITEM_ID: item,
        Col.CHANNEL: pc.fill_null(channel, ""), Col.EVENT_TYPE: pa.array(kind_np, pa.string()), Col.STORE_ID: store,
        Col.QUANTITY: pa.array(qty_np.clip(0, 2**31 - 1), pa.int32()), Col.PRICE: pa.array(price_np),
        Col.TS: pc.fill_null(ts, 0),
    }, schema=EVENT_SCHEMA)
    return table


def _vocab(src: Source, column: str | None, constant: str | None, values: dict[str, str], enum: type,
           field: str, n: int) -> pa.Array:
    if column is None:
        return pa.array([constant] * n, pa.string())
    raw = src.text(column, field, field, required=True)
    if values:
        codes = pa.array(list(values))
        at = pc.index_in(raw, value_set=codes)
        raw = pc.if_else(at.is_valid(), pa.array(list(values.values())).take(pc.fill_null(at, 0)), raw)
    allowed = pa.array([e.value for e in enum])
    bad = _np(raw.is_valid()) & ~_np(pc.is_in(raw, value_set=allowed))
    src.reject(bad, field, f"unknown {field} (map it with {field}_values)", raw)
    return pc.if_else(pa.array(bad), pa.scalar(None, pa.string()), raw)


def _items(src: Source, m: ItemsMapping) -> pa.Table:
    """Item id plus whatever the file describes; `complete_items` fills the rest."""
    columns: dict[str, pa.Array] = {"item_id": src.text(m.item_id, "item_id", "item_id", required=True, is_id=True)}
    if m.category:
        parts = [src.text(c, "category", "category") for c in ([m.category] if isinstance(m.category, str)
                                                               else m.category)]
        path = pc.binary_join_element_wise(*parts, "/", null_handling="skip")
        columns["category"] = pc.if_else(pc.equal(path, ""), pa.scalar(None, pa.string()), path)
    if m.brand:
        columns["brand"] = src.text(m.brand, "brand", "brand")
    if m.price:
        price = pc.multiply(src.number(m.price, "price", "price"), m.currency_unit)
        src.reject(_np(pc.less(price, 0)), "price", "negative price", price)
        columns["price"] = price
    if m.attributes:
        columns["attributes"] = _tags(src, m.attributes)
    return _keep(src, pa.table(columns), True, unique="item_id")


def _tags(src: Source, names: list[str]) -> pa.Array:
    """One "column:value" tag per named column and row, empty values left out."""
    n, k = src.table.num_rows, len(names)
    tags = pa.concat_arrays([pc.binary_join_element_wise(c, src.text(c, "attributes", "attributes"), ":")
                             for c in names])
    values = tags.take(pa.array((np.arange(n)[:, None] + n * np.arange(k)[None, :]).ravel()))
    valid = _np(values.is_valid())
    offsets = np.r_[0, np.cumsum(valid.reshape(n, k).sum(1))].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.filter(pa.array(valid)))


def _members(src: Source, m: MembersMapping, earliest: datetime, latest: datetime) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "member_id": src.text(m.member_id, "member_id", "member_id", required=True, is_id=True)}
    if m.signup:
        columns["signup_ts"] = src.time(m.signup, None, m.time_format, m.timezone, "signup_ts", "signup", earliest,
                                        latest, required=False)
    if m.points:
        points = src.number(m.points, "points", "points", integer=True)
        src.reject(_np(pc.less(points, 0)), "points", "must be >= 0", points)
        columns["points"] = points
    for name in ("tier", "home_store", "region"):
        if getattr(m, name):
            columns[name] = src.text(getattr(m, name), name, name, is_id=name == "home_store")
    for c in Channel:
        column = getattr(m, f"consent_{c.value}")
        if column:
            columns[f"consent_{c.value}"] = src.boolean(column, f"consent_{c.value}", f"consent_{c.value}")
    return pa.table(columns)


def _open(name: str, section: Section, source_dir: Path, report: ImportReport) -> Source:
    return Source.read(name, source_dir / section.path, report, section.delimiter)


def _stores(src: Source, m: StoresMapping) -> pa.Table:
    ids = src.text(m.store_id, "store_id", "store_id", required=True, is_id=True)
    region = (src.text(m.region, "region", "region") if m.region
              else pa.nulls(len(ids), pa.string()))
    table = pa.table({"store_id": ids, "region": pc.fill_null(region, "")})
    return _keep(src, table, True, unique="store_id").cast(STORE_SCHEMA)


def _inventory(src: Source, m: InventoryMapping) -> pa.Table:
    table = pa.table({
        "store_id": src.text(m.store_id, "store_id", "store_id", required=True, is_id=True),
        "item_id": src.text(m.item_id, "item_id", "item_id", required=True, is_id=True),
        "quantity": src.number(m.quantity, "quantity", "quantity", integer=True,
                               required=True),
    })
    src.reject(_np(pc.less(table["quantity"], 0)), "quantity", "must be >= 0", table["quantity"])
    table = _keep(src, table, True)
    return table.set_column(2, "quantity", pc.cast(table["quantity"], pa.int32())).cast(INVENTORY_SCHEMA)


def promotions_table(src: Source, m: PromotionsMapping, items: pa.ChunkedArray, earliest: datetime,
                     latest: datetime) -> pa.Table:
    """Parse the promotion columns (one row per source row, in `PROMOTION_SCHEMA` order, ids dictionary-encoded
    as `PROMOTION_IDS`); rows naming an item the item file lacks, or a range that ends before it starts, are
    rejected.

    Every column is parsed once per distinct value (`Distinct`): Complete Journey's table has 20.9M rows but
    59,800 products, 112 stores and 53 weeks. Read it with `promotion_columns` and `encode=True`."""
    products = Distinct(src, m.item_id, "item_id")
    product_ids = _ids(products, m.item_id, "item_id")
    stores = Distinct(src, m.store_id, "store_id")
    store_ids = _ids(stores, m.store_id, "store_id")
    if m.week and m.week_one:
        weeks = Distinct(src, m.week, "week")
        week = weeks.number(m.week, "week", "week", integer=True, required=True)
        weeks.reject(_np(pc.less(week, 1)) & ~weeks.bad, "week", "must be >= 1", week)
        src.reject(weeks.empty & ~src.bad, "week", "required value is empty")
        one = datetime.fromisoformat(m.week_one)
        one = one if one.tzinfo else one.replace(tzinfo=UTC)
        first = pc.add(pc.multiply(pc.subtract(pc.fill_null(week, 1), 1), 7 * 86_400), int(one.timestamp()))
        start = weeks.take(first)
        end = weeks.take(pc.add(first, 7 * 86_400))
    else:
        starts, ends = Distinct(src, m.start, "start"), Distinct(src, m.end, "end")
        start = starts.take(starts.time(m.start, None, m.time_format, m.timezone, "start_ts", "start", earliest,
                                        latest))
        src.reject(starts.empty & ~src.bad, "start_ts", "required value is empty")
        end = ends.take(ends.time(m.end, None, m.time_format, m.timezone, "end_ts", "end", earliest,
                                  latest + PROMOTIONS_AHEAD))
        src.reject(ends.empty & ~src.bad, "end_ts", "required value is empty")
        src.reject(_np(pc.less_equal(end, start)) & ~src.bad, "end_ts", "not after start", end, _as_iso)
    display = _flag(src, m.display, "display", m.not_promoted)
    mailer = _flag(src, m.mailer, "mailer", m.not_promoted)
    unknown = ~_np(pc.is_in(product_ids, value_set=items)) & ~products.bad
    products.reject(unknown, "item_id", "not in the item file", product_ids)
    return pa.table({"item_id": products.expand(product_ids), "store_id": stores.expand(store_ids),
                     "start_ts": pc.fill_null(start, 0),
                     "end_ts": pc.fill_null(end, 0), "display": display, "mailer": mailer})


def promotion_columns(m: PromotionsMapping) -> list[str]:
    """The source columns `promotions_table` reads (the others are not read at all)."""
    return [c for c in (m.item_id, m.store_id, m.week, m.start, m.end, m.display, m.mailer) if c]


def _ids(values: Distinct, column: str, field: str) -> pa.Array:
    """An id column's distinct values checked as `Source.text` checks ids; an empty row is rejected too."""
    ids = values.text(column, field, field, required=True, is_id=True)
    values.rows.reject(values.empty & ~values.rows.bad, field, "required value is empty")
    return ids


def _flag(src: Source, column: str | None, field: str, no: list[str]) -> pa.Array:
    """True where the column holds a value that is not empty and not one of `no` (any case); all False unmapped.

    Decided once per distinct value: a location code column has a handful of them."""
    if column is None:
        return pa.array(np.zeros(src.table.num_rows, bool))
    src.require(column, field)
    codes = pc.dictionary_encode(src.table[column].combine_chunks())
    values = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(codes.dictionary, pa.string())))
    yes = pc.invert(pc.or_(pc.equal(values, ""), pc.is_in(values, value_set=pa.array([v.lower() for v in no]))))
    return pc.fill_null(pc.take(yes, codes.indices), False)


def _links(src: Source, m: IdentityMapping) -> pa.Table:
    table = pa.table({
        "anonymous_id": src.text(m.anonymous_id, "anonymous_id", "anonymous_id",
                                 required=True, is_id=True),
        "member_id": src.text(m.member_id, "member_id", "member_id", required=True,
                              is_id=True),
    })
    return _keep(src, table, True, unique="anonymous_id").cast(IDENTITY_SCHEMA)
