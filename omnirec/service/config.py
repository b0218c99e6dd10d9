"""`ServiceConfig`: the `service` section of the root config (port, workers, model bundles, API keys)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from omnirec.domain.clock import DAY


class Role(StrEnum):
    """What a caller is allowed to do; each API key maps to one role."""

    APP = "app"
    POS = "pos"
    CAMPAIGN = "campaign"
    ADMIN = "admin"


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "0.0.0.0"
    port: int = Field(50051, ge=0, le=65535)
    """0 picks a free port (tests); with several workers the port must be fixed so they can share it."""
    workers: int = Field(2, ge=1)
    """Processes sharing the port (SO_REUSEPORT); each holds the bundle memory-mapped, so they share its pages."""
    poll_interval_s: float = Field(5.0, gt=0)
    """How often each worker checks whether a newer bundle was published."""
    event_log_dir: Path | None = None
    """Where TrackEvents appends accepted events (Parquet, `domain.schema.EVENT_SCHEMA`); by default
    `<data_dir>/events_live`, which the next `omnirec train` and `omnirec materialize` read with the export."""
    event_log_flush_rows: int = Field(10_000, ge=1)
    """Journaled events are rolled into one Parquet file when this many have accumulated (also every
    `poll_interval_s` and on shutdown)."""
    event_log_fsync: bool = True
    """fsync the journal after each accepted batch (about 2 ms), so an accepted event survives a machine crash,
    not only a process crash."""
    max_clock_skew_s: float = Field(300.0, ge=0)
    """TrackEvents refuses an event whose `ts` is further ahead of the server's clock than this."""
    max_event_age_s: float = Field(30.0 * DAY, gt=0)
    """TrackEvents refuses an event older than this (send history through the batch export instead)."""
    api_keys: dict[str, Role] = {}
    """API key -> role. Keys live in the config file only; with none configured every RPC is refused."""
    default_deadline_s: float = Field(1.0, gt=0)
    """Budget for blocking work (feature reads) when the caller set no deadline."""
    worker_restart_backoff_s: float = Field(0.5, gt=0)
    """A dead worker is replaced after this long, doubling (up to 30 s) while replacements keep dying young."""
    worker_max_quick_restarts: int = Field(5, ge=0)
    """Replacements of one worker that may die within 30 s in a row before `omnirec serve` gives up (exit 1)."""
    shutdown_grace_s: float = Field(5.0, ge=0)
    """On SIGTERM, in-flight RPCs get this long to finish before they are cancelled."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Prometheus metrics of all workers on `http://host:metrics_port/metrics`, served by the parent; None or
    0: no metrics (and no cost: the hooks are no-ops)."""
    metrics_flush_interval_s: float = Field(1.0, gt=0)
    """Each worker records its metrics in memory and writes them to the files the parent serves this often
    (and when it stops): a scrape lags by at most this, and a worker killed outright loses at most this much."""
    audience_nice: int = Field(10, ge=0, le=19)
    """`nice` increment of the audience process (`omnirec.service.audience_process`): campaign pulls get
    the CPU the serving workers leave, so real-time latency holds while an audience streams."""
    audience_chunk_members: int = Field(4096, ge=1)
    """Members an audience pull reads per store round trip; a cancelled call or a passed deadline stops the
    pull at the next chunk."""
    member_state_in_store_above: int | None = Field(None, ge=0)
    """Above this many members in the published bundle, member state moves to the feature store: `omnirec
    materialize` writes each member's lists (`member_top:{id}`, FORMAT.md) and replicas load the bundle without
    member ids, factors and lists, reading a member's lists in the request's feature-store round trip
    (docs/scale.md, "Member state"). None: replicas always hold member state (a laptop, a few million members)."""
    member_state_top_k: int = Field(50, ge=1)
    """Collaborative items stored per member (member state in the store): the bundle's precomputed lists
    when they are this deep (`train.member_top_k`), else a search of its member index. A request that needs
    more (a purchase filter over many purchases, or the stock check's over-fetch, 4k + 20) is topped up from
    the profile, where a replica holding member state would search deeper."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """Each worker's event loop: uvloop (libuv) runs the feature-store reads' socket I/O and callbacks with
    less Python overhead (+11% Recommend throughput with the purchase filter in `bench/service_load.py`);
    `asyncio` is the standard library's loop."""


def member_state_in_store(config: ServiceConfig, members: int) -> bool:
    """Whether a bundle of `members` members serves its member state from the feature store: the one rule
    `omnirec materialize` (which writes the lists) and the replicas (which then do not map them) share."""
    threshold = config.member_state_in_store_above
    return threshold is not None and members > threshold
