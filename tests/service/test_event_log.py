"""The write-ahead event log: journals roll into Parquet, a dead worker's journal is recovered."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pyarrow as pa

from omnirec.domain.readers import read_event_log
from omnirec.domain.schema import LIVE_EVENT_SCHEMA
from omnirec.service.event_log import Journal, recover


def _events(*ids: str) -> pa.Table:
    n = len(ids)
    return pa.table({"member_id": ["m1"] * n, "anonymous_id": [None] * n, "item_id": ["i1"] * n,
                     "channel": ["app"] * n, "event_type": ["view"] * n, "store_id": [None] * n,
                     "quantity": [1] * n, "price": [0.0] * n, "ts": [1_800_000_000] * n, "event_id": list(ids)},
                    LIVE_EVENT_SCHEMA)


def _append_and_die(directory: Path) -> None:
    journal = Journal(directory, "events", LIVE_EVENT_SCHEMA, flush_rows=100, fsync=False)
    journal.append(_events("a", "b"))
    journal.append(_events("c"))
    with open(next(directory.glob(".journal-events-*")), "ab") as fh:
        fh.write(b"\xff\xff\xff\xff\x10\x00")  # a batch torn by the crash
    os._exit(0)  # no roll, no cleanup: as after SIGKILL


def test_journal_rolls_into_parquet_and_readers_keep_one_row_per_event(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "events", LIVE_EVENT_SCHEMA, flush_rows=3, fsync=True)
    journal.append(_events("a", "b"))
    assert read_event_log(tmp_path).num_rows == 0  # still in the journal
    journal.append(_events("c", "a"))  # "a" logged twice (a retry after a crash between log and apply)
    assert not list(tmp_path.glob(".journal-*"))
    assert read_event_log(tmp_path).num_rows == 3


def test_a_dead_workers_journal_is_recovered_and_a_live_one_is_not(tmp_path: Path) -> None:
    mine = Journal(tmp_path, "events", LIVE_EVENT_SCHEMA, flush_rows=100, fsync=False)
    mine.append(_events("x"))
    child = multiprocessing.get_context("fork").Process(target=_append_and_die, args=(tmp_path,))
    child.start()
    child.join(30)
    recovered = recover(tmp_path, "events", LIVE_EVENT_SCHEMA)
    assert sorted(recovered["event_id"].to_pylist()) == ["a", "b", "c"]
    assert read_event_log(tmp_path).num_rows == 3
    assert len(list(tmp_path.glob(".journal-*"))) == 1  # ours, still open and locked
    mine.roll()
    assert read_event_log(tmp_path).num_rows == 4
