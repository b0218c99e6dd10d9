"""Readers that turn event files (simulator output, a retailer export, public MovieLens data) into one
interaction table with explicit id maps. Malformed rows raise `DataError` naming file, line and field;
nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from omnirec.domain.errors import DataError, OmnirecError
from omnirec.domain.idmap import IdMap
from omnirec.domain.schema import (
    EVENT_ID,
    EVENT_SCHEMA,
    IDENTITY_SCHEMA,
    INVENTORY_SCHEMA,
    ITEM_SCHEMA,
    MEMBER_SCHEMA,
    STORE_SCHEMA,
    check_events,
    check_promotions,
    check_required,
)
from omnirec.domain.vocab import Col

log = logging.getLogger(__name__)

EVENTS_FILE = "events.parquet"
MEMBERS_FILE = "members.parquet"
ITEMS_FILE = "items.parquet"
STORES_FILE = "stores.parquet"
INVENTORY_FILE = "inventory.parquet"
IDENTITY_FILE = "identity_links.parquet"
PROMOTIONS_FILE = "promotions.parquet"
EXPOSURES_FILE = "coupon_exposures.parquet"
GROUND_TRUTH_FILE = "coupon_ground_truth.parquet"
LIVE_EVENTS_DIR = "events_live"
"""Folder in the data dir where the service logs the events (`events-<pid>-<ns>.parquet`) and identity links
(`links-<pid>-<ns>.parquet`) it accepted."""


@dataclass(frozen=True)
class Interactions:
    """Member-item events with the id maps that index them; row i of `events` is (member_idx[i], item_idx[i])."""

    events: pa.Table
    members: IdMap
    items: IdMap
    member_idx: np.ndarray
    item_idx: np.ndarray

    @classmethod
    def from_events(cls, events: pa.Table, members: IdMap | None = None, items: IdMap | None = None) -> Interactions:
        """Keep rows that name both a member and an item; the id maps default to the ids seen.

        Passing the catalogue's maps keeps items and members without events addressable (cold start);
        rows whose ids are not in a given map are an error, because dropping them would lose data.
        """
        keep = pc.and_(pc.is_valid(events[Col.MEMBER_ID]), pc.is_valid(events[Col.ITEM_ID]))
        events = events.filter(keep)
        members = members or IdMap.from_ids(pc.unique(events[Col.MEMBER_ID]).sort().to_numpy(zero_copy_only=False))
        items = items or IdMap.from_ids(pc.unique(events[Col.ITEM_ID]).sort().to_numpy(zero_copy_only=False))
        return cls(
            events=events,
            members=members,
            items=items,
            member_idx=_lookup(members, events[Col.MEMBER_ID], "member_id"),
            item_idx=_lookup(items, events[Col.ITEM_ID], "item_id"),
        )

    def __len__(self) -> int:
        return self.events.num_rows


def _lookup(idmap: IdMap, values: pa.ChunkedArray | pa.Array | np.ndarray, field: str) -> np.ndarray:
    """Vectorised id -> index with Arrow's hash lookup (a Python dict lookup per row is 20x slower at 20M rows)."""
    values = pa.chunked_array([pa.array(values, pa.string())]) if isinstance(values, np.ndarray) else values
    idx = pc.index_in(values, value_set=pa.array(idmap.external_ids, pa.string()))
    missing = idx.is_null()
    if pc.any(missing).as_py():
        row = int(np.flatnonzero(missing.to_numpy(zero_copy_only=False))[0])
        raise DataError("<events>", row + 1, field, f"id {values[row].as_py()!r} is not in the catalogue")
    return idx.to_numpy(zero_copy_only=False).astype(np.int32)


def read_events(path: Path) -> pa.Table:
    """Read and validate an event log: a Parquet file or directory, or a CSV with a header row."""
    path = Path(path)
    if path.suffix == ".csv":
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={f.name: f.type for f in EVENT_SCHEMA}, strings_can_be_null=True))
        return check_events(table, str(path), first_line=2)
    return check_events(pq.read_table(path), str(path))


def _log_files(directory: Path, prefix: str) -> list[Path]:
    """The service's log files of one kind, oldest first (`<prefix>-<pid>-<ns>.parquet`)."""
    return sorted(Path(directory).glob(f"{prefix}-*.parquet"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))


def read_event_log(directory: Path) -> pa.Table:
    """Every event the service logged in `directory`, oldest file first, one row per `event_id` (an empty
    table if none). Files without an `event_id` column are read as they are."""
    seen: set[str] = set()
    tables = []
    for f in _log_files(directory, "events"):
        table = pq.read_table(f)
        if EVENT_ID in table.column_names:
            keep = np.ones(table.num_rows, bool)
            for i, event_id in enumerate(table[EVENT_ID].to_pylist()):
                keep[i] = event_id not in seen
                seen.add(event_id)
            table = table.filter(keep).drop_columns([EVENT_ID])
        tables.append(check_events(table, str(f)))
    return pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()


def read_link_log(directory: Path) -> pa.Table:
    """Every identity link the service logged in `directory`, oldest first (later links win)."""
    files = _log_files(directory, "links")
    if not files:
        return IDENTITY_SCHEMA.empty_table()
    return pa.concat_tables(pq.read_table(f).cast(IDENTITY_SCHEMA) for f in files)


def resolve_identities(events: pa.Table, links: pa.Table) -> pa.Table:
    """Credit anonymous events to the member the anonymous id was later linked to."""
    if links.num_rows == 0:
        return events
    mapping = dict(zip(links["anonymous_id"].to_pylist(), links["member_id"].to_pylist(), strict=True))
    anon = events[Col.ANONYMOUS_ID]
    idx = np.flatnonzero(pc.and_(pc.is_null(events[Col.MEMBER_ID]), pc.is_valid(anon)).to_numpy(
        zero_copy_only=False))
    if idx.size == 0:
        return events
    members = events[Col.MEMBER_ID].to_numpy(zero_copy_only=False).astype(object)
    anon_np = anon.to_numpy(zero_copy_only=False)
    members[idx] = [mapping.get(a) for a in anon_np[idx]]
    unresolved = sum(m is None for m in members[idx])
    log.info("identity: %d anonymous events, %d credited to members, %d still anonymous",
             idx.size, idx.size - unresolved, unresolved)
    col = events.schema.get_field_index(Col.MEMBER_ID)
    return events.set_column(col, Col.MEMBER_ID, pa.array(members, type=pa.string()))


class DataFileMissing(DataError):
    """A required file of the data directory is absent."""

    def __init__(self, path: Path) -> None:
        OmnirecError.__init__(self, f"{path} not found; run `omnirec import` (your own data) or "
                              f"`omnirec simulate --out {path.parent}` first")
        self.path, self.line, self.field = str(path), 0, path.stem


def read_promotions(path: Path) -> pa.Table | None:
    """The promotions table (`PROMOTION_SCHEMA`, ids dictionary-encoded), validated; None where there is none.

    Read only by the jobs that use it (`train`, and `import` when it reads its output back): at millions
    of rows (Complete Journey: 20.9M) it would cost every other reader time and memory for nothing."""
    path = Path(path)
    if not path.exists():
        return None
    return check_promotions(pq.read_table(path, read_dictionary=["item_id", "store_id"]), str(path))


def _optional(path: Path, schema: pa.Schema) -> pa.Table:
    return check_required(pq.read_table(path), schema, str(path)) if path.exists() else schema.empty_table()


@dataclass(frozen=True)
class RetailData:
    """The simulator's (or a retailer's) files, validated: entities, events and coupon exposures."""

    members: pa.Table
    items: pa.Table
    stores: pa.Table
    inventory: pa.Table
    events: pa.Table
    identity_links: pa.Table
    promotions: pa.Table | None = None
    """Planned promotions (`read_promotions`), when read with `promotions=True` and the directory has them."""

    @classmethod
    def read(cls, data_dir: Path, promotions: bool = False) -> RetailData:
        """The offline export plus the events the service logged since (`LIVE_EVENTS_DIR`).

        Events and items are required. Without a member table the members are derived from the events
        (`domain.derive.complete_members`, default tiers and lifecycle rules, at the newest event), and so are
        members that only the events name (e.g. accepted live as new members); stores, inventory and
        identity links default to empty. `promotions` also reads the optional promotions table.
        """
        from omnirec.domain.derive import complete_members
        from omnirec.domain.lifecycle import LifecycleRules
        from omnirec.domain.tiers import TierLadder

        d = Path(data_dir)
        for required in (EVENTS_FILE, ITEMS_FILE):
            if not (d / required).exists():
                raise DataFileMissing(d / required)
        links = pa.concat_tables([_optional(d / IDENTITY_FILE, IDENTITY_SCHEMA), read_link_log(d / LIVE_EVENTS_DIR)])
        stores = _optional(d / STORES_FILE, STORE_SCHEMA)
        events = resolve_identities(
            pa.concat_tables([read_events(d / EVENTS_FILE), read_event_log(d / LIVE_EVENTS_DIR)]), links)
        members = check_required(pq.read_table(d / MEMBERS_FILE), MEMBER_SCHEMA, str(d / MEMBERS_FILE)) if (
            d / MEMBERS_FILE).exists() else None
        seen = pc.unique(events[Col.MEMBER_ID].drop_null())
        if members is None or len(pc.filter(seen, pc.invert(pc.is_in(seen, value_set=members["member_id"])))):
            # Members only the events know (the live log accepts new ones) become new members.
            newest = float(pc.max(events[Col.TS]).as_py() or 0)
            members = complete_members(events, stores, TierLadder(), LifecycleRules(), newest, given=members)
        return cls(
            members=members,
            items=check_required(pq.read_table(d / ITEMS_FILE), ITEM_SCHEMA, str(d / ITEMS_FILE)),
            stores=stores,
            inventory=_optional(d / INVENTORY_FILE, INVENTORY_SCHEMA),
            events=events,
            identity_links=links,
            promotions=read_promotions(d / PROMOTIONS_FILE) if promotions else None,
        )

    def until(self, as_of: float) -> RetailData:
        """The data as it stood at `as_of` (unix seconds): later events left out, as if the job ran then."""
        keep = pc.less_equal(self.events[Col.TS], int(as_of))
        if pc.all(keep).as_py() is not False:
            return self
        return dataclasses.replace(self, events=self.events.filter(keep))

    def interactions(self) -> Interactions:
        """Member-item events indexed against the full member and item catalogues."""
        return Interactions.from_events(
            self.events,
            members=IdMap.from_ids(self.members["member_id"].to_numpy(zero_copy_only=False)),
            items=IdMap.from_ids(self.items["item_id"].to_numpy(zero_copy_only=False)),
        )


def _read_tsv(path: Path, names: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    """Read a headerless TSV strictly; on a parse error, find and name the bad line and field."""
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=names),
        )
    except pa.ArrowInvalid as exc:
        with open(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != len(names):
                    raise DataError(str(path), line_no, names[min(len(parts), len(names) - 1)],
                                    f"expected {len(names)} tab-separated fields, got {len(parts)}") from exc
                for name, value in zip(names, parts, strict=True):
                    try:
                        int(value) if pa.types.is_integer(types[name]) else float(value)
                    except ValueError:
                        raise DataError(str(path), line_no, name, f"not a number: {value!r}") from exc
        raise DataError(str(path), 0, "?", str(exc)) from exc


def _ratings_to_events(table: pa.Table, path: Path) -> pa.Table:
    """Public rating data becomes `purchase` events on the web channel: every rating is a positive."""
    n = table.num_rows
    for field in ("user", "item", "ts"):
        row = np.flatnonzero(table[field].to_numpy() < 0)
        if row.size:
            raise DataError(str(path), int(row[0]) + 1, field, "must be >= 0")
    events = pa.table({
        Col.MEMBER_ID: pc.cast(table["user"], pa.string()),
        Col.ANONYMOUS_ID: pa.nulls(n, pa.string()),
        Col.ITEM_ID: pc.cast(table["item"], pa.string()),
        Col.CHANNEL: pa.array(np.full(n, "web")),
        Col.EVENT_TYPE: pa.array(np.full(n, "purchase")),
        Col.STORE_ID: pa.nulls(n, pa.string()),
        Col.QUANTITY: pa.array(np.ones(n, np.int32)),
        Col.PRICE: pa.array(np.zeros(n)),
        Col.TS: table["ts"],
    })
    return check_events(events, str(path))


_RATING_TYPES = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "ts": pa.int64()}


def read_movielens_100k(data_dir: Path) -> Interactions:
    """MovieLens 100k `u.data` as implicit interactions (ids as in the file)."""
    path = Path(data_dir) / "u.data"
    return Interactions.from_events(_ratings_to_events(_read_tsv(path, list(_RATING_TYPES), _RATING_TYPES), path))


@dataclass(frozen=True)
class NcfSplit:
    """The NCF MovieLens-1M protocol: train interactions, each user's held-out item and 99 negatives."""

    train: Interactions
    test_members: np.ndarray
    """Internal member indexes, one per test row."""
    test_items: np.ndarray
    """Internal item index of the held-out positive."""
    negatives: np.ndarray
    """Internal item indexes, shape (n_test, 99)."""


def read_ncf_ml1m(data_dir: Path) -> NcfSplit:
    """Read `ml-1m.train.rating`, `ml-1m.test.rating` and `ml-1m.test.negative` (He et al. 2017)."""
    d = Path(data_dir)
    train_path = d / "ml-1m.train.rating"
    train_events = _ratings_to_events(_read_tsv(train_path, list(_RATING_TYPES), _RATING_TYPES), train_path)
    test = _read_tsv(d / "ml-1m.test.rating", list(_RATING_TYPES), _RATING_TYPES)
    neg_path = d / "ml-1m.test.negative"
    neg_rows: list[list[int]] = []
    with open(neg_path) as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.rstrip("\n").split("\t")
            try:
                neg_rows.append([int(x) for x in parts[1:]])
            except ValueError:
                raise DataError(str(neg_path), line_no, "negatives", "not a list of integer item ids") from None
            if len(neg_rows[-1]) != 99:
                raise DataError(str(neg_path), line_no, "negatives", f"expected 99 items, got {len(neg_rows[-1])}")
    negatives = np.array(neg_rows, dtype=np.int64)
    test_users = test["user"].to_numpy()
    test_items = test["item"].to_numpy()
    all_items = np.unique(np.concatenate([
        train_events[Col.ITEM_ID].to_numpy(zero_copy_only=False).astype(np.int64), test_items, negatives.ravel()]))
    items = IdMap.from_ids(all_items.astype(str))
    train = Interactions.from_events(train_events, items=items)
    return NcfSplit(
        train=train,
        test_members=_lookup(train.members, test_users.astype(str), "user"),
        test_items=_lookup(items, test_items.astype(str), "item"),
        negatives=_lookup(items, negatives.ravel().astype(str), "item").reshape(negatives.shape),
    )
