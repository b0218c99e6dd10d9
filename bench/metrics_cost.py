"""What operability costs: `omnirec serve` with metrics off, on, and on plus a JSON access log, side by side.

    .venv/bin/python bench/metrics_cost.py --config var/bench/omnirec.toml --data-dir var/bench/data

The config is the one `bench/service_load.py` uses (bundle, materialised features in a Redis database of
their own, workers, an `app` key). Each variant is an `omnirec serve` (2 workers) built from that config
with only its ports, event log directory, `[service] metrics_port` and `[logging]` changed; all of them
run for the whole benchmark, idle but for the one under load, and the load alternates between them in
every round (off, on, on + log, then the reverse order), so drift on a shared machine falls on all of
them and no round waits for a server to start. The load is `service_load.measure`: one closed-loop
grpc.aio client over 16 connections, fresh ones each run (the kernel spreads connections, not requests, over
the 2 workers: with `service_load`'s 4, one run in eight puts all of them on one worker), Recommend for a
random member per `service_load.KINDS` (per intent and with the purchase filter). A server with metrics on
is scraped once a second throughout, as a Prometheus would (more often than usual).

Besides QPS it reports the serving workers' CPU time per answered request (utime + stime from /proc):
on a shared, oversubscribed machine QPS swings with the neighbours' load, while the CPU a request costs
barely moves, and on a dedicated machine where the workers saturate their cores throughput is its
inverse. Also the serving parent's CPU per second of load: what answering the scrapes costs it, on cores
it shares with the workers. Prints the medians per variant and, against "off", both the ratio of the
medians and the median of each round's ratio (a variant against the "off" run next to it in time, which
cancels most of the drift); writes bench/results/metrics_cost.json. `--variants off,metrics` spends the
time on the two the 5% target compares; `--variants off,off_again,metrics` adds a control server with
metrics off, whose ratio to "off" is the bench's own noise floor.

`--in-situ` measures the per-request hooks where they run: one metrics server under the same load, whose
workers switch the hooks off and on every `--phase-seconds` (2 s) and note each phase's CPU and requests; the
ratio of two neighbouring phases compares the same process, connections and neighbours a few seconds apart
(writes bench/results/metrics_cost_in_situ.json). The rest (the flush each second, the budget gauges each
`poll_interval_s`, the scrapes in the parent) runs in both phases: measured apart.

`--hooks` measures instead, in this process and without a server, what the per-request hooks add to one call
(the interceptor's request id, context variable, metrics and a Recommend answer's labels, plus one timed
feature-store read) with metrics off and on, alternated.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from service_load import KINDS, measure, wait_ready  # the sibling bench script (bench/ is on sys.path)

from omnirec import logs
from omnirec.config import OmnirecConfig
from omnirec.logs import LoggingConfig

RESULTS = Path(__file__).parent / "results" / "metrics_cost.json"
IN_SITU = Path(__file__).parent / "results" / "metrics_cost_in_situ.json"
VARIANTS = ("off", "off_again", "metrics", "metrics+json_log")
"""`off_again`, a second server with metrics off, is the control: how far two identical servers measured the same
way land apart (what a difference between "off" and "metrics" has to exceed to mean anything)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def variant_config(base: OmnirecConfig, variant: str, event_log_dir: Path) -> OmnirecConfig:
    """`base` with a port, a metrics port and an event log of its own, and the variant's metrics and logs."""
    service = base.service.model_copy(update={"port": _free_port(), "event_log_dir": event_log_dir,
                                              "metrics_port": None if variant.startswith("off") else _free_port()})
    logging = LoggingConfig(format="json", access_log="all" if variant == "metrics+json_log" else "off")
    return base.model_copy(update={"service": service, "logging": logging})


def _serve(config: OmnirecConfig) -> None:
    """The server process (spawned: the bench process already runs grpc). Its log goes to /dev/null."""
    from omnirec.service.server import run

    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the process's stderr for its lifetime)
    logs.setup(config.logging)
    run(config)


def _scrape(port: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14 and 15 of stat)


def worker_cpu_s(parent: int) -> float:
    """User + system CPU seconds of `parent`'s child processes (the serving workers) so far."""
    return sum(cpu_s(int(pid)) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split())


class Variant:
    """One variant's `omnirec serve`, running for the whole benchmark (idle while another variant is loaded),
    and, with metrics on, a scraper reading its endpoint once a second from start to end."""

    def __init__(self, config: OmnirecConfig, serve: Callable[[OmnirecConfig], None] = _serve) -> None:
        self.config = config
        self.target = f"127.0.0.1:{config.service.port}"
        self._server = multiprocessing.get_context("spawn").Process(target=serve, args=(config,))
        self._server.start()
        self._stop = threading.Event()
        self.pid: int = self._server.pid  # type: ignore[assignment]

    def ready(self) -> None:
        wait_ready(self.target, 300)
        if self.config.service.metrics_port:
            threading.Thread(target=_scrape, args=(self.config.service.metrics_port, self._stop), daemon=True).start()

    def measure(self, kind: str, args: argparse.Namespace, api_key: str,
                member_ids: object) -> tuple[float, float, float]:
        """(QPS, worker CPU microseconds per request, the serving parent's CPU milliseconds per second: what
        answering the scrapes costs it, on cores it shares with the workers)."""
        cpu, parent, start = worker_cpu_s(self.pid), cpu_s(self.pid), time.perf_counter()
        row = asyncio.run(measure(self.target, kind, [args.in_flight], args.seconds, api_key, member_ids,
                                  args.connections))[0]
        return (row["qps"], (worker_cpu_s(self.pid) - cpu) * 1e6 / row["requests"],
                (cpu_s(self.pid) - parent) * 1e3 / (time.perf_counter() - start))

    def close(self) -> None:
        self._stop.set()
        self._server.terminate()  # SIGTERM: the serving parent drains its workers
        self._server.join(60)


def _serve_switching(phases: Path, phase_s: float, config: OmnirecConfig) -> None:
    """The metrics server, whose workers switch their per-request metrics hooks (the interceptor's `record`,
    the feature-read timing) off and on every `phase_s`, appending to `phases/PID.txt` a line per phase:
    hooks on (1/0), requests answered, the worker's CPU seconds. Same process, same connections, same memory:
    only the hooks differ between two neighbouring phases."""
    from omnirec.service import metrics, server, telemetry

    state = {"on": True, "calls": 0}
    record, read, end, start = (telemetry._Method.record, metrics.feature_read, telemetry._Call.end,
                                server.ServingState.start)

    def counted_end(self: telemetry._Call, *args: Any) -> None:
        state["calls"] += 1
        end(self, *args)

    def switched_record(self: telemetry._Method, *args: Any) -> None:
        if state["on"]:
            record(self, *args)

    def switched_read(*args: Any) -> None:
        if state["on"]:
            read(*args)

    async def switch() -> None:
        with (phases / f"{os.getpid()}.txt").open("a") as out:
            while True:
                cpu, calls = time.process_time(), state["calls"]
                await asyncio.sleep(phase_s)
                out.write(f"{int(state['on'])} {state['calls'] - calls} {time.process_time() - cpu:.6f}\n")
                out.flush()
                state["on"] = not state["on"]

    async def started(self: server.ServingState, *args: Any, **kwargs: Any) -> None:
        await start(self, *args, **kwargs)
        self.watch(switch())

    telemetry._Call.end = counted_end  # type: ignore[method-assign]
    telemetry._Method.record = switched_record  # type: ignore[method-assign]
    metrics.feature_read = switched_read
    server.ServingState.start = started  # type: ignore[method-assign]
    _serve(config)


def paired_phases(path: Path, min_calls: int) -> list[float]:
    """CPU per request with the hooks on over the neighbouring phase's with them off, for every two neighbouring
    phases of one worker that both answered at least `min_calls` requests (idle gaps between runs left out)."""
    rows = [line.split() for line in path.read_text().splitlines()]
    phases = [(on == "1", int(calls), float(cpu)) for on, calls, cpu in rows]
    ratios = []
    for (on_a, calls_a, cpu_a), (on_b, calls_b, cpu_b) in itertools.pairwise(phases):
        if min(calls_a, calls_b) >= min_calls and on_a != on_b:
            a, b = cpu_a / calls_a, cpu_b / calls_b
            ratios.append(a / b if on_a else b / a)
    return ratios


def in_situ(base: OmnirecConfig, args: argparse.Namespace, api_key: str, member_ids: object) -> None:
    """`--in-situ`: one metrics server loaded with every kind for `--rounds` x `--seconds`, its workers
    switching their per-request hooks every `--phase-seconds`; prints the paired ratios per worker."""
    out: dict[str, object] = {"phase_seconds": args.phase_seconds, "load_average_1_5_15": [os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="omnirec-metrics-cost-") as tmp:
        phases = Path(tmp) / "phases"
        phases.mkdir()
        server = Variant(variant_config(base, "metrics", Path(tmp) / "events"),
                         functools.partial(_serve_switching, phases, args.phase_seconds))
        try:
            server.ready()
            for r in range(args.rounds):
                for kind in KINDS:
                    value, us, _ = server.measure(kind, args, api_key, member_ids)
                    print(f"round {r}: {kind:<22} {value:>8,.0f} QPS {us:>7.0f} us CPU/request  "
                          f"load {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            server.close()
        out["load_average_1_5_15"].append(os.getloadavg())  # type: ignore[attr-defined]
        for path in sorted(phases.glob("*.txt")):
            ratios = paired_phases(path, min_calls=20)
            q1, median, q3 = statistics.quantiles(ratios, n=4)
            out[f"worker {path.stem}"] = ratios
            print(f"worker {path.stem}: CPU per request, hooks on / off in neighbouring {args.phase_seconds:g} s "
                  f"phases: median {median:.3f}, mean {statistics.mean(ratios):.3f}, quartiles {q1:.3f}-{q3:.3f} "
                  f"({len(ratios)} pairs)")
    print("load average (1, 5, 15 min) before and after: "
          + "; ".join(", ".join(f"{x:.2f}" for x in la) for la in out["load_average_1_5_15"]))  # type: ignore[attr-defined]
    IN_SITU.parent.mkdir(parents=True, exist_ok=True)
    IN_SITU.write_text(json.dumps(out, indent=2))
    print(f"wrote {IN_SITU}")


class _Context:
    """What the telemetry interceptor reads and writes of a `grpc.aio.ServicerContext`."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", "key"),)

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def code(self) -> None:
        return None


def hook_cost(rounds: int, calls: int) -> dict[str, list[float]]:
    """CPU microseconds the per-request hooks spend on a Recommend call with the purchase filter, metrics off vs
    on (access log off), with one flush of the recorded metrics per run."""
    from omnirec.service import metrics
    from omnirec.service.telemetry import _Method
    from omnirec.v1 import common_pb2, recommendation_pb2

    request = recommendation_pb2.RecommendRequest(member_id="m0000001", channel=common_pb2.CHANNEL_APP, k=10)
    response = recommendation_pb2.RecommendResponse(
        items=common_pb2.RankedItems(item_ids=[f"i{i}" for i in range(10)], scores=[1.0] * 10,
                                     reasons=[common_pb2.REASON_COLLABORATIVE] * 10),
        info=common_pb2.ResponseInfo(model_version="1"))
    context = _Context()
    out: dict[str, list[float]] = {"off": [], "metrics": []}
    for _ in range(rounds):
        for variant in ("off", "metrics"):
            if variant == "metrics":
                metrics.enable(Path(tempfile.mkdtemp(prefix="omnirec-bench-")))
            method = _Method("/omnirec.v1.RecommendationService/Recommend", "unary", LoggingConfig(access_log="off"))
            start = time.process_time()  # this process's CPU: what the neighbours' load moves least
            for _ in range(calls):
                call = method.begin(context)  # type: ignore[arg-type]
                call.ctx.request = request
                metrics.feature_read("purchased", 0.0004, False)  # the purchase filter's one feature-store read
                call.end(context, response, None)  # type: ignore[arg-type]
            metrics.flush()  # a worker flushes once a second, so this overstates the flush's share
            out[variant].append((time.process_time() - start) * 1e6 / calls)
            metrics.disable()
    return out


def _paired(values: dict[str, dict[str, list[float]]], variant: str, kind: str) -> float:
    """Median over rounds of `variant`'s value over the "off" value of the same round."""
    return statistics.median(v / off for v, off in zip(values[variant][kind], values["off"][kind], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="simulated data: member ids to ask for")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16,
                        help="TCP connections; the kernel spreads connections, not requests, over the workers: "
                             "with 4, one run in eight puts all of them on one worker")
    parser.add_argument("--variants", default="off,metrics,metrics+json_log",
                        help=f"a subset of {', '.join(VARIANTS)}")
    parser.add_argument("--hooks", action="store_true", help="time the interceptor's per-call work only")
    parser.add_argument("--in-situ", action="store_true",
                        help="one metrics server whose workers switch their per-request hooks off and on")
    parser.add_argument("--phase-seconds", type=float, default=2.0, help="--in-situ: how long each switch lasts")
    args = parser.parse_args()
    variants = tuple(v for v in VARIANTS if v in args.variants.split(","))
    if variants[:1] != ("off",):
        parser.error("--variants: needs off, the baseline")
    if args.hooks:
        cost = hook_cost(args.rounds, 20_000)
        off, on = statistics.median(cost["off"]), statistics.median(cost["metrics"])
        print(f"interceptor per Recommend call: metrics off {off:.1f} us, on {on:.1f} us (+{on - off:.1f} us); "
              f"runs off {cost['off']}, on {cost['metrics']}")
        return

    base = OmnirecConfig.load(args.config)
    api_key = next(k for k, role in base.service.api_keys.items() if role == "app")
    members = pq.read_table(args.data_dir / "members.parquet", columns=["member_id"])["member_id"]
    member_ids = members.to_numpy(zero_copy_only=False).astype(str)
    if args.in_situ:
        in_situ(base, args, api_key, member_ids)
        return
    qps: dict[str, dict[str, list[float]]] = {v: {k: [] for k in KINDS} for v in variants}
    cpu: dict[str, dict[str, list[float]]] = {v: {k: [] for k in KINDS} for v in variants}
    parent: dict[str, dict[str, list[float]]] = {v: {k: [] for k in KINDS} for v in variants}
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="omnirec-metrics-cost-") as tmp:
        servers = {v: Variant(variant_config(base, v, Path(tmp) / v)) for v in variants}
        try:
            for server in servers.values():
                server.ready()
            for r in range(args.rounds):
                for variant in variants if r % 2 == 0 else tuple(reversed(variants)):
                    for kind in KINDS:
                        value, us, ms = servers[variant].measure(kind, args, api_key, member_ids)
                        qps[variant][kind].append(value)
                        cpu[variant][kind].append(us)
                        parent[variant][kind].append(ms)
                        print(f"round {r}: {variant:<17} {kind:<22} {value:>8,.0f} QPS {us:>7.0f} us CPU/request "
                              f"parent {ms:>5.1f} ms CPU/s  load {os.getloadavg()[0]:.2f}", flush=True)
                load.append(os.getloadavg())
        finally:
            for server in servers.values():
                server.close()

    results: dict[str, object] = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                                  "workers": base.service.workers, "in_flight": args.in_flight,
                                  "connections": args.connections, "seconds": args.seconds, "rounds": args.rounds,
                                  "qps": qps, "worker_cpu_us_per_request": cpu, "parent_cpu_ms_per_s": parent,
                                  "load_average_1_5_15": load}
    print(f"\n{'variant':<17} {'kind':<22} {'CPU us/req':>10} {'vs off':>7} {'paired':>7} {'QPS':>7} {'vs off':>7} "
          f"{'paired':>7} {'parent ms/s':>11}  CPU runs")
    for variant in variants:
        for kind in KINDS:
            us, q = statistics.median(cpu[variant][kind]), statistics.median(qps[variant][kind])
            runs = ", ".join(f"{c:.0f}" for c in cpu[variant][kind])
            print(f"{variant:<17} {kind:<22} {us:>10.0f} {us / statistics.median(cpu['off'][kind]):>7.1%} "
                  f"{_paired(cpu, variant, kind):>7.1%} {q:>7,.0f} {q / statistics.median(qps['off'][kind]):>7.1%} "
                  f"{_paired(qps, variant, kind):>7.1%} {statistics.median(parent[variant][kind]):>11.1f}  {runs}")
    print("load average (1, 5, 15 min) before and after each round: "
          + "; ".join(", ".join(f"{x:.2f}" for x in la) for la in load))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
