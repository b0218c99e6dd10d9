"""The server factory and the `omnirec serve` process model.

`serve()` builds one grpc.aio server: interceptors (auth first, then errors), every `ServiceSpec`,
the stock health and reflection services. `run()` forks the audience process and the worker processes
first, before any server or event loop exists, and each worker then serves the same port (SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from threadpoolctl import threadpool_limits

from omnirec import tracing
from omnirec.bundle import BundleRegistry
from omnirec.config import OmnirecConfig
from omnirec.domain.errors import OmnirecError
from omnirec.feature_store.embedded import embedded
from omnirec.offers.engine import OfferEngine
from omnirec.service import (
    admin_servicer,
    audience_process,
    audience_servicer,
    event_servicer,
    hold_reaper,
    metrics,
    offer_servicer,
    recommendation_servicer,
    reflection,
    wiring,
)
from omnirec.service.audience_process import AudienceJobs, AudienceProcess
from omnirec.service.bundles import holder_for, load_serving_model
from omnirec.service.features import Features
from omnirec.service.ingest import Ingest
from omnirec.service.interceptors import ApiInterceptor
from omnirec.service.model import ModelHolder, ServingModel
from omnirec.service.registry import ServiceSpec
from omnirec.service.supervisor import Supervisor
from omnirec.service.telemetry import TelemetryInterceptor

log = logging.getLogger(__name__)


NEEDS = {
    "": (True, False, False),
    recommendation_servicer.SERVICE: (True, False, False),
    event_servicer.SERVICE: (False, True, False),
    offer_servicer.SERVICE: (False, True, False),
    audience_servicer.SERVICE: (True, True, True),
    admin_servicer.SERVICE: (False, False, False),
}
"""Health-check name -> (needs a loaded model, needs a materialised feature store, needs the audience
process). A service is NOT_SERVING while a dependency it cannot answer without is missing: recommendations
degrade without the feature store, but events, coupons and audiences cannot, and audiences are built only in
the audience process (down while it is being replaced); the server as a whole ("") follows recommendations."""

AUDIENCE_CHECK_S = 1.0
"""How often a worker looks whether the audience process is up: a lock test of microseconds, so often enough
that a crash and a replacement both show within a second (the other dependencies: `poll_interval_s`)."""


@dataclass
class ServingState:
    """Everything the servicers share inside one worker process: the model, the features, the ingest unit."""

    config: OmnirecConfig
    models: ModelHolder
    features: Features
    ingest: Ingest
    offers: OfferEngine
    audience: AudienceJobs
    """The audience process's address: AudienceService relays its calls there."""
    health: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)
    tracing: tracing.Tracing | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _health: dict[str, bool] = field(default_factory=dict)
    _store: bool = False

    @classmethod
    def create(cls, config: OmnirecConfig, audience: AudienceJobs,
               preloaded: ServingModel | None = None) -> ServingState:
        """`preloaded`: a bundle the parent loaded before forking, so workers share its pages."""
        models = holder_for(config.train.bundle_root, config.data_dir, config.recommendations, config.service)
        if preloaded is not None:
            models.adopt(preloaded)
        parts = wiring.build(config, models)
        return cls(config, models, parts.features, parts.ingest, parts.offers, audience,
                   tracing=tracing.setup(config.tracing))

    async def start(self, reap_holds: bool = True, report_budgets: bool = True) -> None:
        """Recover what dead workers journaled, load the published bundle if there is one, then poll for newer
        ones and roll the event log. `reap_holds`: this worker settles abandoned coupon holds on a cluster
        (`hold_reaper`; of several workers, only slot 0). `report_budgets`: with metrics on, this worker reads
        the offer budgets for their gauges (only slot 0: the gauges keep the most recent value of any process,
        so more readers would only repeat the same Redis reads)."""
        await self.features.warm_up()
        await asyncio.to_thread(self.ingest.recover)
        try:
            await self.models.reload()
        except OmnirecError as exc:
            log.warning("starting without a model: %s", exc)
        interval = self.config.service.poll_interval_s
        self._tasks = [asyncio.create_task(self.models.poll(interval)),
                       asyncio.create_task(self._flush_events(interval)),
                       asyncio.create_task(self._report_health(interval))]
        await self._check_health()
        if reap_holds and self.offers.store.cluster:
            self.watch(hold_reaper.reap_abandoned_holds(self.offers, self.config.offers.reservation_s / 2))
        if metrics.current() is not None:
            if report_budgets:
                self.watch(self._report_budgets(interval))
            self.watch(metrics.flush_every(self.config.service.metrics_flush_interval_s))

    def watch(self, task: Coroutine[None, None, None]) -> None:
        """Run a background task until the worker closes."""
        self._tasks.append(asyncio.create_task(task))

    async def _check_health(self, read_store: bool = True) -> None:
        """Set each service's health from its dependencies now (the only writer of health statuses); the feature
        store as last read unless `read_store`."""
        model = self.models.current is not None
        if read_store:
            try:
                # The same read gives the freshness metrics (a no-op with metrics off): one HMGET per interval.
                metrics.feature_generation(*await self.features.generation(self.config.service.default_deadline_s))
                self._store = True
            except OmnirecError:
                self._store = False
        audience = self.audience.serving()
        for name, (needs_model, needs_store, needs_audience) in NEEDS.items():
            ok = (model or not needs_model) and (self._store or not needs_store) and (audience or not needs_audience)
            if self._health.get(name) != ok:
                self._health[name] = ok
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING if ok
                                      else health_pb2.HealthCheckResponse.NOT_SERVING)
                log.log(logging.INFO if ok else logging.WARNING, "health: %s %s", name or "(server)",
                        "SERVING" if ok else "NOT_SERVING")

    async def _report_health(self, interval_s: float) -> None:
        """Every dependency each `interval_s`, the audience process alone in between (`AUDIENCE_CHECK_S`)."""
        read_at = time.monotonic() + interval_s
        while True:
            await asyncio.sleep(min(AUDIENCE_CHECK_S, interval_s))
            read_store = time.monotonic() >= read_at
            if read_store:
                read_at = time.monotonic() + interval_s
            await self._check_health(read_store)

    async def _report_budgets(self, interval_s: float) -> None:
        """Budget used vs limit of every budgeted offer in the catalogue in force, for the budget-burn alert."""
        while True:
            for offer in self.offers.catalogue.current().offers:
                b = offer.budget
                if b.max_count is None and b.max_money is None:
                    continue
                try:
                    usage = await self.offers.store.usage(offer.id)
                except OmnirecError as exc:
                    log.debug("offer budgets not read: %s", exc)
                    break
                metrics.offer_budget(offer.id, "count", usage.issued, b.max_count)
                metrics.offer_budget(offer.id, "money", usage.reserved_cents / 100, b.max_money)
            await asyncio.sleep(interval_s)

    async def _flush_events(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.ingest.roll)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.ingest.close)
        await self.features.close()
        self.offers.close()
        if self.tracing is not None:
            self.tracing.close()
        metrics.flush()  # after the drain: the last calls' counts


def service_specs(state: ServingState) -> list[ServiceSpec]:
    """Every omnirec service this server exposes; a new service is one line here."""
    config = state.config
    svc = config.service
    deadline = svc.default_deadline_s
    return [
        recommendation_servicer.spec(state.models, state.features, deadline),
        event_servicer.spec(state.ingest, event_servicer.EventRules(svc.max_clock_skew_s, svc.max_event_age_s)),
        admin_servicer.spec(state.models),
        offer_servicer.spec(state.offers, deadline),
        audience_servicer.spec(state.audience, config.tiers, config.service.api_keys),
    ]


async def serve(state: ServingState, port: int | None = None) -> tuple[grpc.aio.Server, int]:
    """A configured, not yet started server and the port it is bound to (0 in config: a free port)."""
    svc = state.config.service
    specs = service_specs(state)
    method_roles = {m: roles for s in specs for m, roles in s.method_roles.items()}
    interceptors = [TelemetryInterceptor(state.config.logging), ApiInterceptor(svc.api_keys, method_roles)]
    if state.tracing is not None:
        interceptors.insert(0, state.tracing.interceptor)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.so_reuseport", 1)],
    )
    for s in specs:
        s.add_to_server(s.servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(state.health, server)
    names = [s.full_name for s in specs]
    reflection.enable([*names, health.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"{svc.host}:{svc.port if port is None else port}")
    return server, bound


async def _worker(config: OmnirecConfig, audience: Path, preloaded: ServingModel | None, slot: int) -> None:
    """One serving process: load the model, serve until SIGTERM/SIGINT, then drain and flush. Worker slot 0
    also reaps abandoned coupon holds on a cluster (`hold_reaper`: one owner, not one per worker) and reads the
    offer budgets for their gauges."""
    state = ServingState.create(config, AudienceJobs(audience), preloaded)
    await state.start(reap_holds=slot == 0, report_budgets=slot == 0)
    server, port = await serve(state)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker %d serving on port %d", os.getpid(), port)
    await stop.wait()
    log.info("worker %d stopping (grace %.1fs)", os.getpid(), config.service.shutdown_grace_s)
    await state.health.enter_graceful_shutdown()  # health checks answer NOT_SERVING while calls drain
    await server.stop(config.service.shutdown_grace_s)
    await state.close()


def _worker_process(config: OmnirecConfig, audience: Path, preloaded: ServingModel | None = None,
                    slot: int = 0) -> None:
    # Workers are the parallelism: one BLAS/OpenMP thread each, so N workers do not oversubscribe N cores.
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        if config.service.event_loop == "uvloop":
            uvloop.run(_worker(config, audience, preloaded, slot))
        else:
            asyncio.run(_worker(config, audience, preloaded, slot))


def _preload(config: OmnirecConfig) -> ServingModel | None:
    """The published bundle, loaded in the parent so the forked workers share it copy-on-write.

    The arrays are memory-mapped (shared anyway); this also shares what loading builds in memory (the
    id maps' dictionaries, the FAISS graphs). `gc.freeze` keeps the collector from writing to those
    objects' headers, which would copy their pages into each worker. Later hot reloads load per worker.
    """
    path = BundleRegistry(config.train.bundle_root).current_path()
    model = load_serving_model(path, config.data_dir, config.recommendations, config.service) \
        if path is not None else None
    gc.freeze()
    return model


def run(config: OmnirecConfig) -> int:
    """`omnirec serve`: `workers` processes and the audience process forked now, before any gRPC object or
    event loop exists, kept alive by `service.supervisor` until SIGTERM/SIGINT; returns the exit code
    (non-zero: could not serve).

    With no `redis.url` the parent runs the embedded Redis for the workers and stops it after them; with
    `metrics_port` set it serves the metrics of all of them.
    """
    if not config.service.api_keys:
        log.warning("no [service.api_keys] configured: every RPC but health and reflection will be refused")
    svc = config.service
    if svc.workers > 1 and svc.port == 0:
        raise ValueError("service.port: several workers must share a fixed port, not 0")
    if svc.metrics_port:
        metrics.enable()  # before the fork: the workers inherit where to write their samples
    try:
        with embedded(config.redis) as redis_config:
            return _run(config.model_copy(update={"redis": redis_config}))
    finally:
        metrics.disable()


def _serve_metrics(config: OmnirecConfig) -> None:
    svc = config.service
    if svc.metrics_port:
        metrics.serve_http(svc.metrics_port, svc.host)
        log.info("metrics on http://%s:%d/metrics", svc.host, svc.metrics_port)


def _run(config: OmnirecConfig) -> int:
    """The audience process and the workers, forked (in that order) before any server exists."""
    svc = config.service
    if svc.workers == 1:
        with audience_process.running(config) as audience:
            _serve_metrics(config)
            _worker_process(config, audience.path)
        return 0
    preloaded = _preload(config)
    audience = AudienceProcess(config)
    try:
        worker = functools.partial(_worker_process, config, audience.path, preloaded)
        jobs = functools.partial(audience.run, functools.partial(audience_process.campaign_jobs, config, preloaded))
        supervisor = Supervisor(multiprocessing.get_context("fork"), worker, svc.workers,
                                svc.worker_restart_backoff_s, svc.worker_max_quick_restarts, others={"audience": jobs})
        return supervisor.run(started=functools.partial(_serve_metrics, config))
    finally:
        audience.close()
