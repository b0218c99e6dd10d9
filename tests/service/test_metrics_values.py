"""Metrics recorded in memory and flushed to the multi-process files: the same samples `Histogram.observe`
and `Counter.inc` would have written, each gain written once however often a flush runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from omnirec.service import metrics

LABELS = ("unary", "omnirec.v1.RecommendationService", "Recommend")


@pytest.fixture
def samples_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "prometheus"
    metrics.enable(directory)
    yield directory
    metrics.disable()


def _samples(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in registry.collect()
            for s in family.samples}


def _bucket(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], le: str) -> float:
    labels = dict(zip(metrics.GRPC_LABELS, LABELS, strict=True))
    return samples["grpc_server_handling_seconds_bucket", tuple(sorted({**labels, "le": le}.items()))]


def test_flush_writes_what_observe_would_have_once(samples_dir: Path) -> None:
    m = metrics.current()
    assert m is not None
    timing, count = m.timing(m.handling, *LABELS), m.count(m.started, *LABELS)
    assert m.timing(m.handling, *LABELS) is timing  # one value per label set
    for seconds in (0.0005, 0.0007, 0.001, 20.0):  # on a bound, between two, on the next, past the last
        timing.observe(seconds)
        count.inc()
    level = m.level(m.event_log_pending, "events")
    level.set(7)
    assert _bucket(_samples(samples_dir), "+Inf") == 0  # nothing written before a flush

    metrics.flush()
    metrics.flush()  # nothing new: nothing added twice
    samples = _samples(samples_dir)
    assert _bucket(samples, "0.0005") == 1  # `le` is inclusive
    assert _bucket(samples, "0.001") == 3
    assert _bucket(samples, "10.0") == 3
    assert _bucket(samples, "+Inf") == 4
    labels = tuple(sorted(zip(metrics.GRPC_LABELS, LABELS, strict=True)))
    assert samples["grpc_server_handling_seconds_sum", labels] == pytest.approx(20.0022)
    assert samples["grpc_server_started_total", labels] == 4
    assert samples["omnirec_event_log_pending_events", (("kind", "events"),)] == 7

    timing.observe(0.003)
    count.inc(2)
    level.set(0)
    metrics.flush()
    samples = _samples(samples_dir)
    assert _bucket(samples, "0.0025") == 3 and _bucket(samples, "0.005") == 4 and _bucket(samples, "+Inf") == 5
    assert samples["grpc_server_started_total", labels] == 6
    assert samples["omnirec_event_log_pending_events", (("kind", "events"),)] == 0
