"""Write-ahead log of what the service accepted (events, identity links), as Parquet files the next
training run and materialisation read (`domain.readers.read_event_log`, `read_link_log`).

A batch is appended to the worker's journal (an Arrow IPC stream, `.journal-<kind>-<pid>-<ns>.arrows`)
and flushed to the operating system, and with `fsync` to the disk, *before* it is applied to the live
store (`service.ingest`): whatever Redis holds is in the log, even if the worker is killed a moment later.
A journal is rolled into one Parquet file (`<kind>-<pid>-<ns>.parquet`, written under a temporary name and
renamed, so a reader never sees half a file) once `flush_rows` rows wait, on a timer and on shutdown.

Each worker holds an exclusive `flock` on its open journal. A journal nobody holds was left by a dead
worker: `recover` rolls it into Parquet (a batch torn by the crash was never applied nor acknowledged, and
is dropped) and returns its rows, so the caller can re-apply them (idempotent: events are de-duplicated
by `event_id`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from omnirec.service import metrics

log = logging.getLogger(__name__)

JOURNAL_PREFIX = ".journal-"


def _read_journal(path: Path, schema: pa.Schema) -> pa.Table:
    """The complete batches of a journal; a torn last batch (the writer died mid-write) is left out."""
    batches: list[pa.RecordBatch] = []
    try:
        reader = pa.ipc.open_stream(path)
        while True:
            batches.append(reader.read_next_batch())
    except StopIteration:
        pass
    except (pa.ArrowInvalid, OSError) as exc:
        log.warning("event log: %s ends in a torn batch (its writer died mid-write): %s", path, exc)
    return pa.Table.from_batches(batches, schema)


def _write_parquet(directory: Path, kind: str, table: pa.Table) -> Path:
    path = directory / f"{kind}-{os.getpid()}-{time.time_ns()}.parquet"
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.rename(path)
    return path


@dataclass
class _Segment:
    """The open journal file of a worker, locked while it is open."""

    path: Path
    file: BinaryIO
    writer: pa.ipc.RecordBatchStreamWriter
    rows: int = 0


class Journal:
    """One kind of record (`kind`: "events" or "links") of one worker. Thread-safe; every method blocks."""

    def __init__(self, directory: Path, kind: str, schema: pa.Schema, flush_rows: int, fsync: bool) -> None:
        self.directory = directory
        self.kind = kind
        self.schema = schema
        self.flush_rows = flush_rows
        self.fsync = fsync
        self._lock = threading.Lock()
        self._segment: _Segment | None = None

    def append(self, table: pa.Table) -> None:
        """Durably append `table` (cast to `schema`): on return it survives the process (and, with `fsync`,
        the machine)."""
        with self._lock:
            segment = self._segment or self._open()
            segment.writer.write_table(table.cast(self.schema))
            segment.file.flush()
            if self.fsync:
                os.fsync(segment.file.fileno())
            segment.rows += table.num_rows
            if segment.rows >= self.flush_rows:
                self._roll()
            metrics.event_log_pending(self.kind, self._segment.rows if self._segment else 0)

    def roll(self) -> None:
        """Turn what the journal holds into a Parquet file now (timer, shutdown)."""
        with self._lock:
            self._roll()
            metrics.event_log_pending(self.kind, 0)

    def _open(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{JOURNAL_PREFIX}{self.kind}-{os.getpid()}-{time.time_ns()}.arrows"
        fh = open(path, "wb")  # noqa: SIM115 (kept open across appends, closed when rolled)
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._segment = _Segment(path, fh, pa.ipc.new_stream(fh, self.schema))
        return self._segment

    def _roll(self) -> None:
        segment, self._segment = self._segment, None
        if segment is None:
            return
        segment.writer.close()
        segment.file.flush()
        if segment.rows:
            # Still holding the lock: nobody recovers this journal while it becomes a Parquet file.
            path = _write_parquet(self.directory, self.kind, _read_journal(segment.path, self.schema))
            log.info("event log: %d %s -> %s", segment.rows, self.kind, path)
        segment.path.unlink()
        segment.file.close()


def recover(directory: Path, kind: str, schema: pa.Schema) -> pa.Table:
    """Roll the journals of `kind` that no live worker holds into Parquet; returns their rows."""
    tables = []
    for path in sorted(directory.glob(f"{JOURNAL_PREFIX}{kind}-*.arrows")):
        try:
            fh = open(path, "rb")  # noqa: SIM115 (closed below, after the lock is no longer needed)
        except FileNotFoundError:  # its owner rolled it meanwhile
            continue
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live worker's open journal
                continue
            if not path.exists():  # rolled by its owner between our open and our lock
                continue
            table = _read_journal(path, schema)
            if table.num_rows:
                target = _write_parquet(directory, kind, table)
                log.warning("event log: recovered %d %s from %s (a worker died) -> %s", table.num_rows, kind,
                            path.name, target.name)
                tables.append(table)
            path.unlink()
    return pa.concat_tables(tables) if tables else schema.empty_table()
