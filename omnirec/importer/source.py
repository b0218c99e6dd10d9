"""One input file of a retailer's export, read as it is, and the vectorised parsers that check its values.

Every parser returns a typed Arrow array with nulls where a value was bad, and records the bad rows (their
source lines, the field, the reason) with the report; `Source.bad` marks every row that failed any check.
CSV lines count the header (the first data row is line 2); for Parquet the "line" is the 1-based row.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from omnirec.domain.errors import InvalidArgument
from omnirec.importer.report import ImportReport, TableReport

_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"
_INTEGER = r"^[-+]?\d+(\.0*)?$"
_ISO = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"
_ZONE = r"(Z|[+-]\d{2}:?\d{2})$"
_CONTROL = r"[\x00-\x1f\x7f]"
_TRUE = ["1", "true", "t", "yes", "y"]
_FALSE = ["0", "false", "f", "no", "n"]
MS_ABOVE = 100_000_000_000
"""Unix seconds above this are after the year 5000: the column is in milliseconds."""
SECONDS_BELOW = 10_000_000_000
"""Unix milliseconds below this are before 1970-04-27: the column is in seconds."""


def _np(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


class Source:
    """A table as read from one file, with the source line of each row and the rows rejected so far."""

    def __init__(self, name: str, path: Path, table: pa.Table, lines: np.ndarray | None, report: ImportReport,
                 stats: TableReport, file_columns: list[str] | None = None) -> None:
        self.name = name
        self.path = path
        self.table = table
        self.lines = lines
        """Source line of each row; None where row i is line i + 1 (Parquet: no array of 8 bytes a row)."""
        self.report = report
        self.stats = stats
        self.bad = np.zeros(table.num_rows, bool)
        self.file_columns = file_columns or table.column_names
        """Every column the file has, read or not (named when a mapped column is missing)."""

    @classmethod
    def read(cls, name: str, path: Path, report: ImportReport, delimiter: str = ",",
             columns: list[str] | None = None, encode: bool = False) -> Source:
        """The file as it is, or only `columns` of it (those it has: a missing one fails where it is used).

        `encode` keeps every column dictionary-encoded, read in batches: a long table of few distinct values
        (Complete Journey's 20.9M promotions: 59,800 products, 112 stores, 53 weeks) then takes 4 bytes a
        row and column instead of its values, and is parsed once per distinct value (`Distinct`).
        """
        if not path.exists():
            raise InvalidArgument(f"mapping {name}.path", f"{path}: file not found")
        stats = report.table(name, str(path))
        lines = None
        if path.suffix == ".parquet" or path.is_dir():
            file_columns = ds.dataset(path, format="parquet").schema.names
            wanted = [c for c in file_columns if c in columns] if columns is not None else None
            table = _read_parquet_encoded(path, wanted) if encode else pq.read_table(path, columns=wanted)
        else:
            table, lines, file_columns = _read_csv(path, delimiter, report, stats, columns)
            if encode:
                for i, column in enumerate(table.column_names):
                    table = table.set_column(i, column, pc.dictionary_encode(table[column]))
        stats.rows_read = table.num_rows + int(sum(stats.rejected.values()))
        return cls(name, path, table, lines, report, stats, file_columns)

    def require(self, column: str, key: str) -> None:
        if column not in self.table.column_names:
            raise InvalidArgument(f"mapping {self.name}.{key}",
                                  f"column {column!r} is not in {self.path} (columns: "
                                  f"{', '.join(self.file_columns)})")

    def reject(self, mask: np.ndarray, field: str, reason: str, values: pa.Array | pa.ChunkedArray | None = None,
               show: Callable[[pa.Array], pa.Array] | None = None) -> None:
        """Rows where `mask` holds fail `field` for `reason`; they are counted and not written.

        `values` are quoted in the first problem lines, through `show` when given (only those few are shown).
        """
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return
        shown = rows[: max(self.report.max_errors, 0)]
        sample = values.take(pa.array(shown)) if values is not None else None
        if sample is not None and pa.types.is_dictionary(sample.type):
            sample = sample.dictionary_decode()
        if sample is not None and show is not None:
            sample = show(sample)
        self.report.add(self.stats, rows + 1 if self.lines is None else self.lines[rows], field, reason, sample)
        self.bad |= mask

    # ---- parsers -------------------------------------------------------------------------------------

    def text(self, column: str, field: str, key: str, required: bool = False, is_id: bool = False) -> pa.Array:
        """Trimmed text, null where empty; non-UTF-8 bytes, missing required values and control characters
        in ids are rejected."""
        self.require(column, key)
        col = self.table[column].combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            col = self._utf8(col, field)
        elif pa.types.is_floating(col.type):
            whole = pc.fill_null(pc.equal(pc.floor(col), col), True)
            as_int = pc.cast(pc.cast(col, pa.int64(), safe=False), pa.string())
            col = pc.if_else(whole, as_int, pc.cast(col, pa.string()))
        elif not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            col = pc.cast(col, pa.string())
        col = pc.utf8_trim_whitespace(col.cast(pa.string()))
        col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
        if required:
            self.reject(_np(col.is_null()) & ~self.bad, field, "required value is empty")
        if is_id:
            ctrl = _np(pc.match_substring_regex(col, _CONTROL))
            self.reject(ctrl, field, "ids must not contain control characters", col)
        return col

    def _utf8(self, col: pa.Array, field: str) -> pa.Array:
        try:
            return col.cast(pa.string())
        except pa.ArrowInvalid:
            pass
        values = col.to_pylist()
        bad = np.zeros(len(values), bool)
        for i, v in enumerate(values):
            if v is not None:
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError:
                    bad[i] = True
        self.reject(bad, field, "not valid UTF-8 (save the export as UTF-8)")
        return pc.if_else(pa.array(bad), pa.scalar(None, pa.binary()), col).cast(pa.string())

    def number(self, column: str, field: str, key: str, integer: bool = False, required: bool = False,
               default: float | None = None) -> pa.Array:
        """A float64 (or int64) column; text that is not a number is rejected, empty is `default` or rejected."""
        self.require(column, key)
        col = self.table[column].combine_chunks()
        target = pa.int64() if integer else pa.float64()
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
            out = pc.cast(col, pa.float64())
            if integer:
                frac = _np(pc.not_equal(pc.floor(out), out))
                self.reject(frac, field, "not a whole number", col)
                out = pc.if_else(pa.array(frac), pa.scalar(None, pa.float64()), out)
            bad_float = _np(pc.invert(pc.is_finite(out)))
            self.reject(bad_float, field, "not a finite number", col)
            out = pc.if_else(pa.array(bad_float), pa.scalar(None, pa.float64()), out)
        else:
            text = self.text(column, field, key)
            ok = _np(pc.match_substring_regex(text, _INTEGER if integer else _NUMBER))
            self.reject(_np(text.is_valid()) & ~ok, field, "not a whole number" if integer else "not a number",
                        text)
            out = pc.cast(pc.if_else(pa.array(ok), text, pa.scalar(None, pa.string())), pa.float64())
        missing = _np(out.is_null()) & ~self.bad
        if default is not None:
            out = pc.fill_null(out, default)
        elif required:
            self.reject(missing, field, "required value is empty")
        return pc.cast(out, target, safe=False) if integer else out

    def boolean(self, column: str, field: str, key: str) -> pa.Array:
        """yes/no, true/false, 1/0 (any case); empty is null, anything else is rejected."""
        self.require(column, key)
        col = self.table[column].combine_chunks()
        if pa.types.is_boolean(col.type):
            return col
        text = pc.utf8_lower(self.text(column, field, key))
        yes = _np(pc.is_in(text, pa.array(_TRUE)))
        no = _np(pc.is_in(text, pa.array(_FALSE)))
        self.reject(_np(text.is_valid()) & ~yes & ~no, field, "not yes/no, true/false or 1/0", text)
        return pa.array(np.where(yes, True, np.where(no, False, None)), pa.bool_())

    def time(self, time_col: str | None, date_col: str | None, fmt: str, tz: str, field: str, key: str,
             earliest: datetime, latest: datetime, required: bool = True) -> pa.Array:
        """Unix seconds (int64) from one column or date + time-of-day columns, checked for plausibility:
        milliseconds read as seconds (and the reverse), times before `earliest` or after `latest`."""
        if date_col and time_col:
            joined = pc.binary_join_element_wise(self.text(date_col, field, f"{key}.date"),
                                                 self.text(time_col, field, key), " ")
            seconds = self._parse_text(joined, fmt, tz, field)
        else:
            column = date_col or time_col
            if column is None:
                raise InvalidArgument(key, "names neither a date nor a time column")
            self.require(column, key)
            col = self.table[column].combine_chunks()
            if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
                seconds = _native_seconds(col, tz)
            elif (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)) or fmt in ("s", "ms"):
                seconds = self._epoch(column, fmt, field, key)
            else:
                seconds = self._parse_text(self.text(column, field, key), fmt, tz, field)
        missing = _np(seconds.is_null()) & ~self.bad
        if required:
            self.reject(missing, field, "required value is empty")
        lo, hi = int(earliest.timestamp()), int(latest.timestamp())
        early = _np(pc.less(seconds, lo))
        self.reject(early, field, f"before {earliest:%Y-%m-%d}: implausibly old (a wrong unit or a placeholder "
                    "date?)", seconds, _as_iso)
        self.reject(_np(pc.greater(seconds, hi)), field, f"in the future (after {latest:%Y-%m-%d %H:%M} UTC)",
                    seconds, _as_iso)
        return seconds

    def _epoch(self, column: str, fmt: str, field: str, key: str) -> pa.Array:
        values = self.number(column, field, key)
        if fmt == "ms":
            self.reject(_np(pc.and_(pc.greater(values, 0), pc.less(values, SECONDS_BELOW))), field,
                        'looks like seconds, not milliseconds; set time_format = "s"', values)
            values = pc.divide(values, 1000.0)
        elif fmt in ("s", "auto"):
            ms = _np(pc.greater(values, MS_ABOVE))
            self.reject(ms, field, 'looks like milliseconds, not seconds; set time_format = "ms"', values)
            values = pc.if_else(pa.array(ms), pa.scalar(None, pa.float64()), values)
        else:
            raise InvalidArgument(f"mapping {self.name}.time_format",
                                  f"{fmt!r} does not apply to the numeric column {column!r}; use s or ms")
        return pc.cast(pc.floor(values), pa.int64())

    def _parse_text(self, text: pa.Array, fmt: str, tz: str, field: str) -> pa.Array:
        if fmt in ("auto", "iso8601"):
            ok = _np(pc.match_substring_regex(text, _ISO))
            self.reject(_np(text.is_valid()) & ~ok, field, "not an ISO 8601 time (YYYY-MM-DD[ HH:MM[:SS]][zone])",
                        text)
            zoned = ok & _np(pc.match_substring_regex(text, _ZONE))
            out = np.zeros(len(text), np.int64)
            for mask, aware in ((zoned, True), (ok & ~zoned, False)):
                if mask.any():
                    out[mask] = self._iso(text.filter(pa.array(mask)), np.flatnonzero(mask), aware, tz, field)
            return pa.array(out, mask=~ok | self.bad)
        if fmt in ("s", "ms"):
            raise InvalidArgument(f"mapping {self.name}.time_format", f"{fmt!r} needs a numeric column")
        parsed = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
        self.reject(_np(text.is_valid()) & _np(parsed.is_null()), field, f"does not match time_format {fmt!r}",
                    text)
        if "%z" not in fmt:
            parsed = _localise(parsed, tz)
        return pc.cast(pc.cast(parsed, pa.timestamp("s", "UTC")), pa.int64())

    def _iso(self, text: pa.Array, rows: np.ndarray, aware: bool, tz: str, field: str) -> np.ndarray:
        target = pa.timestamp("ns", "UTC") if aware else pa.timestamp("ns")
        try:
            stamps = text.cast(target)
        except pa.ArrowInvalid:
            # A well-formed but impossible date (2017-02-30): find those rows, one value at a time.
            invalid = np.zeros(len(text), bool)
            for i, v in enumerate(text.to_pylist()):
                try:
                    pa.scalar(v).cast(target)
                except pa.ArrowInvalid:
                    invalid[i] = True
            full = np.zeros(len(self.bad), bool)
            full[rows[invalid]] = True
            self.reject(full, field, "not a valid date or time")
            stamps = pc.if_else(pa.array(invalid), pa.scalar(None, pa.string()), text).cast(target)
        if not aware:
            stamps = _localise(stamps, tz)
        seconds = pc.cast(stamps, pa.int64()).to_numpy(zero_copy_only=False)
        return np.floor_divide(np.nan_to_num(seconds.astype(np.float64)), 1e9).astype(np.int64)


class Distinct(Source):
    """One column's distinct values as a `Source` of one row each, so a parser runs once per value however
    many rows hold it; rejecting a value rejects every row that holds it (rows some other check already
    rejected are not counted again), with those rows' lines. `empty` marks the rows where the column is
    null: no value stands for them, so the caller decides whether that is a problem."""

    def __init__(self, rows: Source, column: str, key: str) -> None:
        rows.require(column, key)
        col = rows.table[column].combine_chunks()
        encoded = col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(col)
        super().__init__(rows.name, rows.path, pa.table({column: encoded.dictionary}), None, rows.report,
                         rows.stats, rows.file_columns)
        self.rows = rows
        self.index = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
        self.empty = self.index < 0

    def reject(self, mask: np.ndarray, field: str, reason: str, values: pa.Array | pa.ChunkedArray | None = None,
               show: Callable[[pa.Array], pa.Array] | None = None) -> None:
        if not mask.any():
            return
        rows = np.append(mask, False)[self.index] & ~self.rows.bad
        if rows.any():
            self.rows.reject(rows, field, reason, None if values is None else self.expand(values), show)
        self.bad |= mask

    def expand(self, values: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
        """Per-value results as a row array (codes into `values`); null where the row is empty or its value
        parsed to null or was rejected. Rejected values are left out of the dictionary, so what is written
        names only values that passed (`domain.schema.check_promotions` checks every dictionary value)."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        valid = _np(values.is_valid()) & ~self.bad  # a null in the dictionary itself cannot be written to Parquet
        at = np.append(np.cumsum(valid, dtype=np.int32) - 1, -1)
        at[:-1][~valid] = -1
        codes = at[self.index]
        null = codes < 0
        return pa.DictionaryArray.from_arrays(pa.array(np.where(null, 0, codes), mask=null), values.filter(valid))

    def take(self, values: pa.Array) -> pa.Array:
        """Per-value results as plain row values (null where the row is empty)."""
        return values.take(pa.array(self.index, mask=self.empty))


def _localise(stamps: pa.Array, tz: str) -> pa.Array:
    """Naive wall-clock times in zone `tz` -> UTC instants (DST gaps and overlaps take the earlier time)."""
    if tz == "UTC":
        return stamps.cast(pa.timestamp(stamps.type.unit, "UTC"))
    try:
        return pc.assume_timezone(stamps, timezone=tz, ambiguous="earliest", nonexistent="earliest")
    except pa.ArrowInvalid as exc:
        raise InvalidArgument("mapping timezone", f"{tz!r}: {exc}") from None


def _native_seconds(col: pa.Array, tz: str) -> pa.Array:
    if pa.types.is_date(col.type):
        col = col.cast(pa.timestamp("s"))
    if col.type.tz is None:
        col = _localise(col, tz)
    unit = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[col.type.unit]
    return pc.divide(pc.cast(col, pa.int64()), pa.scalar(unit, pa.int64()))


def _as_iso(seconds: pa.Array) -> pa.Array:
    return pc.strftime(pc.cast(seconds, pa.timestamp("s", "UTC")), format="%Y-%m-%dT%H:%M:%SZ")


def _read_parquet_encoded(path: Path, columns: list[str] | None) -> pa.Table:
    """The Parquet table with every column dictionary-encoded, one column and batch at a time, so the plain
    values of a whole column (20.9M int64 product ids: 168 MB) never sit in memory, nor two columns' codes."""
    dataset = ds.dataset(path, format="parquet")
    encoded = {}
    for name in columns if columns is not None else dataset.schema.names:
        chunks = [c if pa.types.is_dictionary(c.type) else pc.dictionary_encode(c)
                  for batch in dataset.to_batches(columns=[name], batch_size=1 << 20) for c in batch.columns]
        kind = dataset.schema.field(name).type
        encoded[name] = pa.concat_arrays(chunks) if chunks else pa.array(
            [], kind if pa.types.is_dictionary(kind) else pa.dictionary(pa.int32(), kind))
    return pa.table(encoded)


def _read_csv(path: Path, delimiter: str, report: ImportReport, stats: TableReport,
              columns: list[str] | None = None) -> tuple[pa.Table, np.ndarray, list[str]]:
    """Every column (or those of `columns` the file has) as bytes, so one bad byte cannot fail the whole
    file; rows with the wrong number of fields are rejected with their line. Single-threaded so the reader
    knows each row's line. Also returns the file's column names."""
    skipped: list[tuple[int, int, int]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        skipped.append((row.number or 0, row.expected_columns, row.actual_columns))
        return "skip"

    with pacsv.open_csv(path, read_options=pacsv.ReadOptions(use_threads=False),
                        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda _: "skip"),
                        ) as reader:
        file_columns = reader.schema.names
    wanted = [c for c in file_columns if c in columns] if columns is not None else file_columns
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid,
                                         ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in wanted},
                                             include_columns=wanted, strings_can_be_null=True),
    )
    for line, expected, actual in skipped:
        report.add(stats, np.array([line]), "row", "wrong number of fields",
                   pa.array([f"{actual} fields, expected {expected}"]))
    skipped_lines = np.array(sorted(s[0] for s in skipped), np.int64)
    would_be = skipped_lines - 2 - np.arange(len(skipped_lines))
    rows = np.arange(table.num_rows, dtype=np.int64)
    lines = rows + 2 + np.searchsorted(would_be, rows, side="right")
    return table, lines, file_columns
