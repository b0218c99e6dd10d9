"""Prometheus metrics of `omnirec serve`, aggregated over every worker process.

prometheus_client's multi-process mode: the serving parent picks a fresh directory before it forks
(`enable`), each worker writes its samples to memory-mapped files there, and the parent's HTTP endpoint
(`serve_http`) sums them at scrape time; a worker that exits is marked dead (`worker_exited`) so its live
gauges disappear while its counters stay in the totals.

A hook does not write those files itself: a multi-process increment takes a lock, a `getpid` and an mmap
write, and a Recommend made five of them (started, handled, the histogram's sum and bucket, the answer),
more CPU than the rest of the interceptor together (`bench/metrics_cost.py --hooks`). Hooks add to plain
Python numbers held per label set instead (`Count`, `Timing`, `Level`, looked up once per label set and
kept by the caller when it is hot), and `flush` writes what changed since the last flush; each worker
flushes every `[service] metrics_flush_interval_s` (`flush_every`) and once more when it stops, so a scrape
is at most one interval behind and a worker killed outright loses at most that interval's counts. Counts
and timings are recorded on the worker's event-loop thread (a gauge's level may be set from another
thread: one assignment); a flush may run on any thread, since each value has one writer and the flush
keeps its own watermark, under a lock against a concurrent flush.

Names follow the ecosystem: `grpc_server_*` as go-grpc-prometheus and py-grpc-prometheus export them
(recorded by `service.telemetry.TelemetryInterceptor`), `omnirec_*` for the service's own. Times are
exported as Unix timestamps (`*_timestamp_seconds`), not ages, so a worker that stops updating one still
shows its data getting older: ages are `time() - metric` in PromQL.

Every hook is a no-op until `enable` is called, so a server with `metrics_port` unset pays one `None`
check per hook. The hooks are the plain functions below, one line to call (the supervisor calls
`worker_exited` and `worker_restarted`). A Recommend `intent` needs no hook: the interceptor reads it off
the request once the request has that enum field.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's own interface: where each process's sample files live (inherited by the workers)."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds. Finer at the low end than Prometheus' defaults (5 ms and up): answers take about a millisecond."""

GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

RESTARTS = "omnirec_worker_restarts"
"""Counted by the serving parent itself, outside `ServiceMetrics` (see `worker_restarted`)."""


class Count:
    """A counter child's total in this process; `flush` adds what it gained since the last flush."""

    __slots__ = ("_child", "_written", "n")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._written = 0.0
        self.n = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.n += amount

    def flush(self) -> None:
        n = self.n
        if n != self._written:
            self._child.inc(n - self._written)
            self._written = n


class Timing:
    """A histogram child's observations in this process, per bucket (not cumulative, as prometheus_client
    stores them); `flush` adds each bucket's and the sum's gain since the last flush."""

    __slots__ = ("_child", "_bounds", "_written", "_written_sum", "counts", "sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds = child._upper_bounds  # ends with +Inf, so every value has a bucket
        self.counts = [0] * len(self._bounds)
        self._written = [0] * len(self._bounds)
        self.sum = self._written_sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # the first bound >= value, as `Histogram.observe`
        self.sum += value

    def flush(self) -> None:
        counts, total = list(self.counts), self.sum
        if counts == self._written:
            return
        # prometheus_client's own per-bucket and sum values (what `Histogram.observe` increments).
        for bucket, now, before in zip(self._child._buckets, counts, self._written, strict=True):
            if now != before:
                bucket.inc(now - before)
        self._child._sum.inc(total - self._written_sum)
        self._written, self._written_sum = counts, total


class Level:
    """A gauge child's latest value in this process; `flush` writes it when it changed."""

    __slots__ = ("_child", "_written", "value")

    def __init__(self, child: Gauge) -> None:
        self._child = child
        self._written: float | None = None
        self.value: float | None = None

    def set(self, value: float) -> None:
        self.value = value

    def flush(self) -> None:
        value = self.value
        if value is not None and value != self._written:
            self._child.set(value)
            self._written = value


@dataclass(frozen=True)
class ServiceMetrics:
    """Every metric a worker records; each worker creates its own on first use, after the fork (created in
    the parent, the live gauges would also list the parent's pid, with zeros). Hooks record through
    `count`, `timing` and `level`, whose values `flush` writes to the multi-process files."""

    started: Counter
    handled: Counter
    handling: Histogram
    answers: Counter
    degraded: Counter
    feature_read: Histogram
    feature_timeouts: Counter
    model_version: Gauge
    model_created: Gauge
    feature_generation: Gauge
    feature_generation_time: Gauge
    event_log_pending: Gauge
    coupons: Counter
    budget_spent: Gauge
    budget_limit: Gauge
    _children: dict[tuple[object, tuple[str, ...]], Count | Timing | Level] = field(
        default_factory=dict, repr=False, compare=False)
    _flushing: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, counter: Counter, *labels: str) -> Count:
        child = self._children.get((counter, labels))
        if child is None:
            child = self._children[counter, labels] = Count(counter.labels(*labels) if labels else counter)
        return child  # type: ignore[return-value]

    def timing(self, histogram: Histogram, *labels: str) -> Timing:
        child = self._children.get((histogram, labels))
        if child is None:
            child = self._children[histogram, labels] = Timing(histogram.labels(*labels) if labels else histogram)
        return child  # type: ignore[return-value]

    def level(self, gauge: Gauge, *labels: str) -> Level:
        child = self._children.get((gauge, labels))
        if child is None:
            child = self._children[gauge, labels] = Level(gauge.labels(*labels) if labels else gauge)
        return child  # type: ignore[return-value]

    def flush(self) -> None:
        """Write what every label set gained or changed since the last flush to this process's files."""
        with self._flushing:
            for child in list(self._children.values()):
                child.flush()

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> ServiceMetrics:
        r = registry or CollectorRegistry()
        return cls(
            started=Counter("grpc_server_started", "RPCs started on the server.", GRPC_LABELS, registry=r),
            handled=Counter("grpc_server_handled", "RPCs completed on the server, whatever their status.",
                            (*GRPC_LABELS, "grpc_code"), registry=r),
            handling=Histogram("grpc_server_handling_seconds", "Time from an RPC's start to its status.",
                               GRPC_LABELS, buckets=LATENCY_BUCKETS, registry=r),
            answers=Counter("omnirec_answers", "Answers by method, intent and the reason code of their first item "
                            "(collaborative, content_cold_start, popular_*, ...; `empty` for no item).",
                            ("grpc_method", "intent", "reason"), registry=r),
            degraded=Counter("omnirec_degraded_answers", "Answers given without some of their inputs, by cause.",
                             ("grpc_method", "reason"), registry=r),
            feature_read=Histogram("omnirec_feature_read_seconds", "Feature-store reads on the request path.",
                                   ("read",), buckets=LATENCY_BUCKETS, registry=r),
            feature_timeouts=Counter("omnirec_feature_read_timeouts", "Feature-store reads cut by the request's "
                                     "time budget.", ("read",), registry=r),
            model_version=Gauge("omnirec_model_bundle_version", "Version of the bundle each worker serves.",
                                registry=r, multiprocess_mode="liveall"),
            model_created=Gauge("omnirec_model_bundle_created_timestamp_seconds", "When the bundle each worker "
                                "serves was trained.", registry=r, multiprocess_mode="liveall"),
            feature_generation=Gauge("omnirec_feature_generation", "Feature-store generation readers are "
                                     "pointed at.", registry=r, multiprocess_mode="livemax"),
            feature_generation_time=Gauge("omnirec_feature_generation_timestamp_seconds", "When that generation "
                                          "was switched in.", registry=r, multiprocess_mode="livemax"),
            event_log_pending=Gauge("omnirec_event_log_pending_events", "Records accepted and journaled but not yet "
                                    "rolled into the event log's Parquet files (what training reads), by kind "
                                    "(events, links).", ("kind",), registry=r, multiprocess_mode="livesum"),
            coupons=Counter("omnirec_coupon_decisions", "DecideCoupon outcomes by reason (`issued` or the rule "
                            "that refused).", ("outcome", "reason"), registry=r),
            budget_spent=Gauge("omnirec_offer_budget_spent", "Budget an offer has used: coupons issued (unit "
                               "count) or money reserved (unit money).", ("offer_id", "unit"), registry=r,
                               multiprocess_mode="mostrecent"),
            budget_limit=Gauge("omnirec_offer_budget_limit", "An offer's budget, per unit; offers without a "
                               "limit in a unit are left out.", ("offer_id", "unit"), registry=r,
                               multiprocess_mode="mostrecent"),
        )


_metrics: ServiceMetrics | None = None
_restarts: Counter | None = None
_directory: Path | None = None


def current() -> ServiceMetrics | None:
    """This process's metrics once `enable` ran (None when the server runs without them)."""
    global _metrics
    if _metrics is None and _directory is not None:
        _metrics = ServiceMetrics.create()
    return _metrics


def enable(directory: Path | None = None) -> None:
    """Switch this process, and every process it forks afterwards, to multi-process metrics.

    Must run before the workers are forked. `directory` defaults to a fresh temporary one, removed by
    `disable`; a given directory is emptied, since samples left by an earlier run would be summed in.
    """
    global _directory
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="omnirec-metrics-"))
    else:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus_client picks its value class at import; it may have been imported before the variable was set.
    values.ValueClass = values.MultiProcessValue()
    _directory = directory


def disable() -> None:
    """Stop recording and remove the samples directory (the serving parent, once every worker exited)."""
    global _metrics, _restarts, _directory
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)
    os.environ.pop(MULTIPROC_ENV, None)
    values.ValueClass = values.MutexValue
    _metrics, _restarts, _directory = None, None, None
    _reads.clear()


def serve_http(port: int, host: str = "0.0.0.0") -> None:
    """Expose the sum over all processes at `http://host:port/metrics`, on a daemon thread of this process.

    The serving parent calls it after forking (a thread must not be running across a fork).
    """
    if _directory is None:
        raise RuntimeError("metrics.enable() must run first")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(_directory))
    start_http_server(port, host, registry=registry)


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges; its counters stay part of the totals."""
    if _directory is not None:
        mark_process_dead(pid, str(_directory))


def worker_restarted() -> None:
    """The serving parent forked a replacement for a worker that died (counted in the parent's own file)."""
    global _restarts
    if _directory is None:
        return
    if _restarts is None:
        _restarts = Counter(RESTARTS, "Worker processes the serving parent replaced.",
                            registry=CollectorRegistry())
    _restarts.inc()


def flush() -> None:
    """Write this process's recorded values now (a worker's last act, and tests that read the files)."""
    if _metrics is not None:
        _metrics.flush()


async def flush_every(interval_s: float) -> None:
    """A worker's background task: `flush` every `interval_s` until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        flush()


_reads: dict[str, Timing] = {}
"""`feature_read`'s value per read name, kept to skip the label-set lookup on every request (emptied by
`disable`)."""


def feature_read(read: str, seconds: float, timed_out: bool) -> None:
    if (m := current()) is not None:
        timing = _reads.get(read)
        if timing is None:
            timing = _reads[read] = m.timing(m.feature_read, read)
        timing.observe(seconds)
        if timed_out:
            m.count(m.feature_timeouts, read).inc()


def model_loaded(version: str, created_at: float | None) -> None:
    """A worker started serving a bundle (at start-up or on hot swap)."""
    if (m := current()) is not None:
        if version.isdigit():
            m.level(m.model_version).set(int(version))
        if created_at is not None:
            m.level(m.model_created).set(created_at)


def feature_generation(generation: int, switched_at: float | None) -> None:
    if (m := current()) is not None:
        m.level(m.feature_generation).set(generation)
        if switched_at is not None:
            m.level(m.feature_generation_time).set(switched_at)


def event_log_pending(kind: str, rows: int) -> None:
    if (m := current()) is not None:
        m.level(m.event_log_pending, kind).set(rows)


def coupon_decided(issued: bool, reason: str) -> None:
    if (m := current()) is not None:
        m.count(m.coupons, "issued" if issued else "refused", reason).inc()


def offer_budget(offer_id: str, unit: str, spent: float, limit: float | None) -> None:
    """`unit` is `count` (coupons issued) or `money` (reserved); `limit` None: unlimited in that unit."""
    if (m := current()) is not None:
        m.level(m.budget_spent, offer_id, unit).set(spent)
        if limit is not None:
            m.level(m.budget_limit, offer_id, unit).set(limit)
