"""Append-only log of the events accepted by TrackEvents, as Parquet files the next training run reads.

Each worker buffers accepted rows and writes them as one file (`events-<pid>-<ns>.parquet`, schema
`domain.schema.EVENT_SCHEMA`) when the buffer is full, on a timer and on shutdown. Files are written
under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from omnirec.domain.schema import EVENT_SCHEMA

log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, directory: Path, flush_rows: int) -> None:
        self.directory = directory
        self.flush_rows = flush_rows
        self._pending: list[pa.Table] = []
        self._rows = 0
        self._lock = asyncio.Lock()

    async def append(self, events: pa.Table) -> None:
        """Buffer a validated batch (already cast to EVENT_SCHEMA); writes a file once enough rows wait."""
        async with self._lock:
            self._pending.append(events)
            self._rows += events.num_rows
            if self._rows >= self.flush_rows:
                await self._write()

    async def flush(self) -> None:
        async with self._lock:
            await self._write()

    async def _write(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        self._pending, self._rows = [], 0
        path = await asyncio.to_thread(write_events, self.directory, table)
        log.info("event log: %d events -> %s", table.num_rows, path)


def write_events(directory: Path, table: pa.Table) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"events-{os.getpid()}-{time.time_ns()}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table.cast(EVENT_SCHEMA), tmp)
    tmp.rename(path)
    return path
