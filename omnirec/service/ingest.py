"""Accept -> log -> apply, as one unit, for TrackEvents and LinkIdentity.

An event is taken fully (in the event log and in the online store) or not at all, and a retry after any
failure ends with it taken exactly once:

1. `LiveUpdater.prepare` reads which events are new (their `event_id` claims) and plans their writes;
   if Redis cannot answer, nothing is taken and the call fails UNAVAILABLE.
2. The new events are appended to the worker's journal (`service.event_log`) and flushed before anything
   is written to Redis, so Redis never holds an event the log lacks.
3. `LiveUpdater.commit` claims and applies them in one Lua script (one per slot on Redis Cluster), all or
   nothing per script, so a claim never exists without the writes it guards.

The unit runs on a thread pool and is shielded from the RPC: when the caller's deadline expires or it
cancels, the unit still finishes, and the retry is answered `duplicates` with the event in both places.
If step 3 fails (Redis died), the event is in the log but not in Redis: the retry applies it (and logs it
again; readers keep one row per `event_id`), and the next materialisation rebuilds Redis from the log in
any case. Journals of a worker that died are rolled and re-applied by the next worker that starts.
Identity links follow the same order (log, then apply); linking is idempotent, so a retry is harmless.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pyarrow as pa

from omnirec.domain.errors import OmnirecError
from omnirec.domain.schema import EVENT_ID, IDENTITY_SCHEMA, LIVE_EVENT_SCHEMA
from omnirec.domain.vocab import AnonymousId, MemberId
from omnirec.feature_store.live import LivePlan, LiveReport, LiveUpdater
from omnirec.service.event_log import Journal, recover

T = TypeVar("T")
log = logging.getLogger(__name__)


class Ingest:
    """One per worker process: the live updater, the event and link journals, and the threads units run on."""

    def __init__(self, live: LiveUpdater, directory: Path, flush_rows: int, fsync: bool, threads: int = 8) -> None:
        self._live = live
        self.directory = directory
        self.events = Journal(directory, "events", LIVE_EVENT_SCHEMA, flush_rows, fsync)
        self.links = Journal(directory, "links", IDENTITY_SCHEMA, flush_rows, fsync)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ingest")

    async def track(self, events: pa.Table, event_ids: Sequence[str]) -> LiveReport:
        """Take a validated batch (`EVENT_SCHEMA`, one id per row); the report counts new events and duplicates."""
        return await self._unit(self._track, events, event_ids)

    async def link(self, anonymous_id: AnonymousId, member_id: MemberId) -> int:
        """Take an identity link; returns how many recent anonymous items were credited to the member."""
        return await self._unit(self._link, anonymous_id, member_id)

    async def _unit(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` to completion even if the awaiting RPC is cancelled (deadline, client gone)."""
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(self._pool, functools.partial(fn, *args)))

    def _track(self, events: pa.Table, event_ids: Sequence[str]) -> LiveReport:
        def log_fresh(plan: LivePlan) -> None:
            if any(plan.fresh):
                with_ids = events.append_column(EVENT_ID, pa.array(event_ids, pa.string()))
                self.events.append(with_ids.filter(pa.array(plan.fresh)))

        return self._live.apply(events, event_ids, before_commit=log_fresh)

    def _link(self, anonymous_id: AnonymousId, member_id: MemberId) -> int:
        self.links.append(pa.table({"anonymous_id": [anonymous_id], "member_id": [member_id]}, IDENTITY_SCHEMA))
        return self._live.link(anonymous_id, member_id)

    def recover(self) -> None:
        """Roll the journals of dead workers into the log and re-apply them (idempotent) to the live store."""
        events = recover(self.directory, "events", LIVE_EVENT_SCHEMA)
        links = recover(self.directory, "links", IDENTITY_SCHEMA)
        started = time.monotonic()
        try:
            if events.num_rows:
                report = self._live.apply(events.drop_columns([EVENT_ID]), events[EVENT_ID].to_pylist())
                log.info("re-applied %d recovered events (%d were already applied)", report.applied,
                         report.duplicates)
            for anonymous_id, member_id in zip(links["anonymous_id"].to_pylist(), links["member_id"].to_pylist(),
                                               strict=True):
                self._live.link(anonymous_id, member_id)
        except OmnirecError as exc:  # they are in the log: the next materialisation applies them
            log.warning("recovered events not re-applied to the live store (%.1fs): %s",
                        time.monotonic() - started, exc)

    def roll(self) -> None:
        self.events.roll()
        self.links.roll()

    def close(self) -> None:
        """Let running units finish, then roll the journals."""
        self._pool.shutdown(wait=True)
        self.roll()
