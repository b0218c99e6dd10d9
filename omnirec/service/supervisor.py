"""The `omnirec serve` parent: keeps `workers` serving processes (and the audience process) alive until
SIGTERM/SIGINT.

A worker that dies (a crash, the OOM killer, `kill -9`) is logged and replaced by a fresh fork, after a
back-off that doubles while replacements keep dying young (`service.worker_restart_backoff_s` up to
`MAX_BACKOFF_S`) and resets once one has served `HEALTHY_AFTER_S`; the replacement re-applies what the
dead worker journaled (`service.ingest`). If a slot's replacements die young more than
`service.worker_max_quick_restarts` times in a row, the service cannot serve: the parent stops the other
workers and exits non-zero, so a process supervisor (systemd, Kubernetes) sees the failure. On
SIGTERM/SIGINT the parent forwards SIGTERM, waits for the workers to drain and exits 0; a parent that is
killed outright takes its workers with it (`PR_SET_PDEATHSIG`: they drain as on SIGTERM).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.context import ForkContext, ForkProcess

from omnirec.service import metrics

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 30.0


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _worker(target: Callable[[], None], parent: int) -> None:
    """A forked worker starts with the default signal actions, not the parent's handlers (until its own loop
    installs the graceful ones, a SIGTERM simply ends it), and gets SIGTERM when the parent dies: a parent
    killed outright (`kill -9`, the OOM killer) must not leave unsupervised workers serving the port beside
    the replacement service's."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the prctl
            return
    target()


@dataclass
class _Slot:
    """One process position (a worker, or another process such as the audience process): its current
    process and how its recent replacements fared."""

    name: str
    target: Callable[[], None]
    process: ForkProcess | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    backoff_s: float = 0.0


class Supervisor:
    def __init__(self, ctx: ForkContext, target: Callable[[int], None], workers: int, backoff_s: float,
                 max_quick_restarts: int, others: Mapping[str, Callable[[], None]] | None = None) -> None:
        """`target(i)` runs worker i; a replacement gets its slot's `i`, so a duty of one worker (the hold
        reaper of worker 0) always has exactly one owner. `others`: more processes to keep alive beside the
        workers, by name, forked before them."""
        self._ctx = ctx
        self._backoff_s = backoff_s
        self._max_quick_restarts = max_quick_restarts
        self._slots = [_Slot(name, other, backoff_s=backoff_s) for name, other in (others or {}).items()]
        self._slots += [_Slot(f"worker {i}", functools.partial(target, i), backoff_s=backoff_s)
                        for i in range(workers)]
        self._stopping = False

    def _spawn(self, slot: _Slot) -> None:
        slot.process = self._ctx.Process(target=_worker, args=(slot.target, os.getpid()),
                                         name=f"omnirec-{slot.name.replace(' ', '-')}")
        slot.process.start()
        slot.started, slot.restart_at = time.monotonic(), None

    def _stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        self._stopping = True
        for slot in self._slots:
            if slot.process is not None and slot.process.pid is not None and slot.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGTERM)

    def _died(self, slot: _Slot, process: ForkProcess) -> bool:
        """Record a death; False when the slot has failed too often to try again."""
        lived = time.monotonic() - slot.started
        slot.process = None
        if lived >= HEALTHY_AFTER_S:
            slot.quick_deaths, slot.backoff_s = 0, self._backoff_s
        slot.quick_deaths += lived < HEALTHY_AFTER_S
        if slot.quick_deaths > self._max_quick_restarts:
            log.critical("%s (pid %s) %s after %.1fs; %d replacements in a row died within %.0fs: giving up",
                         slot.name, process.pid, _describe(process.exitcode), lived, slot.quick_deaths - 1,
                         HEALTHY_AFTER_S)
            return False
        log.error("%s (pid %s) %s after %.1fs; starting a replacement in %.1fs", slot.name, process.pid,
                  _describe(process.exitcode), lived, slot.backoff_s)
        slot.restart_at = time.monotonic() + slot.backoff_s
        slot.backoff_s = min(slot.backoff_s * 2, MAX_BACKOFF_S)
        return True

    def run(self, started: Callable[[], None] = lambda: None) -> int:
        """Serve until stopped; 0 after SIGTERM/SIGINT, 1 when workers could not be kept alive. `started`
        runs once the first workers are forked (threads the parent starts then are not forked into them)."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in self._slots:
            self._spawn(slot)
        started()
        code = 0
        while True:
            alive = [s for s in self._slots if s.process is not None]
            if self._stopping and not alive:
                return code
            pending = [s.restart_at for s in self._slots if s.restart_at is not None]
            timeout = max(0.0, min(pending) - time.monotonic()) if pending else 1.0
            wait([s.process.sentinel for s in alive if s.process is not None], timeout=min(timeout, 1.0))
            for slot in alive:
                process = slot.process
                if process is None or process.is_alive():
                    continue
                process.join()
                metrics.worker_exited(process.pid)  # type: ignore[arg-type]
                if self._stopping:
                    slot.process = None
                elif not self._died(slot, process):
                    code = 1
                    self._stop()
            if not self._stopping:
                for slot in self._slots:
                    if slot.restart_at is not None and time.monotonic() >= slot.restart_at:
                        self._spawn(slot)
                        metrics.worker_restarted()
                        log.warning("%s replaced: pid %s", slot.name, slot.process.pid)  # type: ignore[union-attr]
