"""Closed-loop load on loopback: Recommend per intent on `omnirec serve`, alternated with an empty grpc.aio echo server.

    .venv/bin/python bench/service_load.py --config var/bench/omnirec.toml --data-dir var/bench/data
    .venv/bin/python bench/service_load.py --config var/bench/omnirec.toml --data-dir var/bench/m1000000 \
        --synthetic 1000000,100000 --levels 8

Set-up from a trained bundle: `omnirec simulate --members 1000000 --items 100000`, `omnirec train`,
`omnirec materialize` with a config whose `[redis]` points at a database of its own (e.g.
`redis://127.0.0.1:6379/7`; the tests use database 1): millions of bench keys in a tests' database slow
their key scans; then `bench/intent_lists.py` when the bundle has no intent lists (the precomputed-list
path). Without a training run (`--synthetic MEMBERS,ITEMS`: training 1M members does not fit beside the
benchmark on a shared machine): the retailer is simulated into `--data-dir` when it holds none (60 days,
seed 0), materialised into the config's Redis when its namespace holds no generation, and a bundle of random
factors with intent lists of the ranker's shape (`bench/synthetic_bundle.py`: serving cost depends on shapes,
not values) is published under the config's `train.bundle_root` when none is. The config needs `[service]
port`, `workers` and an `app` key in `[service.api_keys]`; the echo server listens on port + 1.

Both servers run at once as separate processes with the same number of workers; the load generator is one
grpc.aio client process over `--connections` TCP connections (4: the kernel balances connections, not
requests, across the workers) that keeps 1, 8 and 64 requests in flight. Each measurement of a request kind
(`KINDS`: Recommend for a random member, k=10, per intent and with the purchase filter) at a level runs
right after an echo measurement at that level (`--seconds` each, after 2 s of warm-up), `--rounds` times,
and its ratio is taken against that echo run, so the noise of a machine other jobs load shows up in both;
the 1-minute load average is recorded with each measurement. Besides QPS and latency each row has the
server's worker CPU time per answered call (utime + stime of its worker processes from /proc, as
`bench/offer_load.py`): on a shared machine QPS swings with the neighbours' load, the CPU a call costs much
less, so it is the figure to compare changes by.

`--baseline DIR` also serves the same calls from another copy of the code (a third server on port + 2, run
with `PYTHONPATH=DIR` and `python -P` so the working directory's copy does not shadow it), measured right
after the current code in every round: a before/after in one run, e.g.

    git archive main | tar -x -C /tmp/rec-base && cp -r omnirec/v1 /tmp/rec-base/omnirec/
    .venv/bin/python bench/service_load.py ... --baseline /tmp/rec-base

Its rows are named `before:<kind>`.
Counts failed and degraded answers (a degraded Recommend skipped its feature-store read, so its speed is
not the real path's). Prints a table, writes bench/results/service_load.json, and reports resident (RSS)
and proportional (PSS: shared pages split between the processes mapping them) memory per serving worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import uvloop

from omnirec.config import OmnirecConfig
from omnirec.v1 import common_pb2, recommendation_pb2, recommendation_pb2_grpc

ECHO_METHOD = "/bench.Echo/Echo"
KINDS = {
    "mixed_default": {},
    "buy_again": {"intent": recommendation_pb2.INTENT_BUY_AGAIN},
    "discover": {"intent": recommendation_pb2.INTENT_DISCOVER},
    "exclude_purchased": {"exclude_purchased": True},
}
"""Request fields of each kind. `mixed_default`: no intent set (MIXED; a member the model knows is answered
from the bundle alone unless it has intent lists, which need the purchased list); `buy_again`, `discover`:
one purchased-list read each; `exclude_purchased`: today's answer with the purchase filter."""
RESULTS = Path(__file__).parent / "results" / "service_load.json"


async def _echo_worker(port: int) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


def echo_server(port: int, workers: int) -> None:
    """The ceiling: grpc.aio with nothing behind it, forked into `workers` processes like `omnirec serve`."""
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            uvloop.run(_echo_worker(port))  # the event loop `omnirec serve` runs by default
            os._exit(0)
        pids.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(p, signal.SIGTERM) for p in pids])
    for pid in pids:
        os.waitpid(pid, 0)


async def _closed_loop(calls: list, make_request, in_flight: int, seconds: float) -> dict[str, float]:
    """`in_flight` users, each sending its next request as soon as the last one is answered; user i uses
    connection i mod len(calls)."""
    latencies: list[float] = []
    errors = degraded = 0
    deadline = time.perf_counter() + seconds

    async def user(seed: int) -> None:
        nonlocal errors, degraded
        rng = np.random.default_rng(seed)
        call = calls[seed % len(calls)]
        while time.perf_counter() < deadline:
            request = make_request(rng)
            t0 = time.perf_counter()
            try:
                reply = await call(request, timeout=5)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            degraded += isinstance(reply, recommendation_pb2.RecommendResponse) and reply.info.degraded

    t0 = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(in_flight)))
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"in_flight": in_flight, "requests": len(lat), "errors": errors, "degraded": degraded,
            "qps": len(lat) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


async def measure(target: str, kind: str, levels: list[int], seconds: float, api_key: str,
                  member_ids: np.ndarray, connections: int, server_pid: int | None = None) -> list[dict[str, float]]:
    """Closed-loop load over `connections` TCP connections: the kernel spreads connections, not requests,
    over the processes sharing the port (SO_REUSEPORT), so one connection would load one worker only.
    With `server_pid` each row has `cpu_us`, the CPU its worker processes spent per answered call."""
    # A local subchannel pool per channel: otherwise channels to one target share one connection.
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    try:
        if kind == "echo":
            payload = recommendation_pb2.RecommendRequest(member_id="m0000000", channel=common_pb2.CHANNEL_APP,
                                                          k=10).SerializeToString()
            calls = [channel.unary_unary(ECHO_METHOD) for channel in channels]

            def make(rng: np.random.Generator) -> bytes:
                return payload
        else:
            metadata = (("x-api-key", api_key),)

            def recommend_on(channel: grpc.aio.Channel):  # type: ignore[no-untyped-def]
                stub = recommendation_pb2_grpc.RecommendationServiceStub(channel)
                return lambda request, timeout: stub.Recommend(request, timeout=timeout, metadata=metadata)

            calls = [recommend_on(channel) for channel in channels]

            fields = KINDS[kind]

            def make(rng: np.random.Generator) -> recommendation_pb2.RecommendRequest:
                return recommendation_pb2.RecommendRequest(
                    member_id=str(member_ids[rng.integers(len(member_ids))]), channel=common_pb2.CHANNEL_APP,
                    k=10, **fields)
        for channel in channels:
            await channel.channel_ready()
        await _closed_loop(calls, make, 8, min(seconds, 2.0))  # warm-up: connections, page cache, JIT-free paths
        rows = []
        for level in levels:
            load = os.getloadavg()[0]
            cpu0 = worker_cpu_s(server_pid) if server_pid else 0.0
            row = await _closed_loop(calls, make, level, seconds) | {"load_1m": load}
            if server_pid:
                row["cpu_us"] = (worker_cpu_s(server_pid) - cpu0) * 1e6 / max(row["requests"], 1)
            rows.append(row)
        return rows
    finally:
        for channel in channels:
            await channel.close()


def memory(pid: int) -> dict[str, float]:
    """RSS and PSS (MiB) of one process: PSS counts shared (memory-mapped bundle) pages once overall."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            out[name.lower() + "_mib"] = int(rest.split()[0]) / 1024
    return out


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def worker_cpu_s(parent: int) -> float:
    """User + system CPU seconds of `parent`'s child processes (the serving workers; an idle audience process
    adds nothing) so far."""
    total = 0
    for pid in children(parent):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:  # a worker that just exited
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def wait_ready(target: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=max(1.0, deadline - time.time()))


def setup(args: argparse.Namespace) -> tuple[OmnirecConfig, str, np.ndarray, list[int], dict[str, str]]:
    """What a serving benchmark takes from its arguments: the config, an `app` key, the member ids to ask
    for, the in-flight levels and the environment `omnirec serve` runs with."""
    config = OmnirecConfig.load(args.config)
    api_key = next(k for k, role in config.service.api_keys.items() if role == "app")
    members = pq.read_table(args.data_dir / "members.parquet", columns=["member_id"])["member_id"]
    levels = [int(x) for x in args.levels.split(",")]
    return (config, api_key, members.to_numpy(zero_copy_only=False).astype(str), levels,
            {**os.environ, "OMNIREC_CONFIG": str(args.config)})


def stop(servers: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every server first, then wait: they drain in parallel rather than one after another."""
    procs = list(servers)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(60)


def synthetic(config: OmnirecConfig, data_dir: Path, members: int, items: int) -> None:
    """Simulated data, its features in Redis and a random bundle with intent lists, each made only when
    missing (see the module doc)."""
    from synthetic_bundle import write_bundle

    from omnirec.domain.lifecycle import LifecycleRules
    from omnirec.domain.tiers import TierLadder
    from omnirec.feature_store.connection import connect
    from omnirec.feature_store.keys import Keys
    from omnirec.feature_store.materialize import materialize
    from omnirec.simulator import SimulationConfig, simulate

    if not (data_dir / "members.parquet").exists():
        simulate(SimulationConfig(n_members=members, n_items=items, days=60, seed=0), data_dir, progress=True)
    client = connect(config.redis)
    try:
        if client.hget(Keys(config.redis.namespace).pointer(), "generation") is None:
            materialize(data_dir, config.redis, TierLadder(), LifecycleRules(), now=time.time(), progress=True)
    finally:
        client.close()
    write_bundle(data_dir, config.train.bundle_root, dim=32, intent_lists=50)


def summarise(results: dict[str, object], kinds: list[str]) -> list[dict[str, object]]:
    """Per kind and level: the rounds pooled (QPS and latency percentiles averaged, CPU per call the median,
    `vs_echo` the mean of each run's ratio to the echo run just before it)."""
    out = []
    for kind in ["echo", *kinds, *(f"before:{k}" for k in kinds)]:
        rows = results.get(kind, [])
        for level in dict.fromkeys(r["in_flight"] for r in rows):  # type: ignore[attr-defined]
            mine = [r for r in rows if r["in_flight"] == level]  # type: ignore[attr-defined]
            out.append({"kind": kind, "in_flight": level, "runs": len(mine),
                        "qps": float(np.mean([r["qps"] for r in mine])),
                        "p50_ms": float(np.mean([r["p50_ms"] for r in mine])),
                        "p99_ms": float(np.mean([r["p99_ms"] for r in mine])),
                        "cpu_us": float(np.median([r.get("cpu_us", 0.0) for r in mine])),
                        "vs_echo": float(np.mean([r.get("vs_echo", 1.0) for r in mine])),
                        "errors": sum(r["errors"] for r in mine), "degraded": sum(r["degraded"] for r in mine),
                        "load_1m": [round(r["load_1m"], 1) for r in mine]})
    return out


def alternate(results: dict[str, object], kinds: list[str], levels: list[int], args: argparse.Namespace,
              api_key: str, member_ids: np.ndarray, servers: dict[str, tuple[int, int]]) -> None:
    """Every kind on the current code (and the baseline), each right after an echo run, `args.rounds` times per
    level; `servers`: name -> (port, pid). Rows go to `results[echo | kind | before:kind]` in run order."""
    runs = [(kind, kind, "serve") for kind in kinds]
    if "baseline" in servers:
        runs += [(kind, f"before:{kind}", "baseline") for kind in kinds]
    for level in levels:
        for _ in range(args.rounds):
            for kind, label, server in runs:
                echo_qps = None
                for name, what, target in (("echo", "echo", "echo"), (label, kind, server)):
                    port, pid = servers[target]
                    row = asyncio.run(measure(f"127.0.0.1:{port}", what, [level], args.seconds, api_key,
                                              member_ids, args.connections, pid))[0]
                    if echo_qps is None:
                        echo_qps = row["qps"]
                    else:
                        row["vs_echo"] = row["qps"] / echo_qps
                    results.setdefault(name, []).append(row)  # type: ignore[attr-defined]
                    print(f"  {name:<26} {level:>3} in flight: {row['qps']:>8,.0f} QPS  p99 {row['p99_ms']:6.2f} ms"
                          f"  {row['cpu_us']:>6,.0f} us CPU per call  load {row['load_1m']:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="omnirec config (bundle root, redis, api key)")
    parser.add_argument("--data-dir", type=Path, required=True, help="simulated data: member ids to ask for")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--levels", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of each kind per level")
    parser.add_argument("--connections", type=int, default=4,
                        help="client TCP connections (spread over the server's workers by the kernel)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"request kinds to measure, of {', '.join(KINDS)}")
    parser.add_argument("--synthetic", metavar="MEMBERS,ITEMS",
                        help="simulate, materialise and publish a random bundle with intent lists where missing")
    parser.add_argument("--baseline", type=Path, help="another copy of the code to serve the same calls (before)")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server, args.workers)
        return
    if args.synthetic:
        members, items = (int(x) for x in args.synthetic.split(","))
        synthetic(OmnirecConfig.load(args.config), args.data_dir, members, items)

    config, api_key, member_ids, levels, env = setup(args)
    port = config.service.port
    results: dict[str, object] = {"workers": args.workers, "connections": args.connections,
                                  "seconds_per_level": args.seconds, "rounds": args.rounds,
                                  "baseline": str(args.baseline) if args.baseline else None,
                                  "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                                  "members": len(member_ids)}

    servers = {"echo": subprocess.Popen([sys.executable, "-P", __file__, "--config", str(args.config),
                                         "--data-dir", str(args.data_dir), "--workers", str(args.workers),
                                         "--echo-server", str(port + 1)]),
               "serve": subprocess.Popen([sys.executable, "-P", "-m", "omnirec", "serve", "--workers",
                                          str(args.workers)], env=env)}
    ports = {"echo": port + 1, "serve": port, "baseline": port + 2}
    if args.baseline:
        servers["baseline"] = subprocess.Popen(
            [sys.executable, "-P", "-m", "omnirec", "serve", "--workers", str(args.workers), "--port", str(port + 2)],
            env={**env, "PYTHONPATH": str(args.baseline.resolve())})
    kinds = args.kinds.split(",")
    try:
        for name in servers:
            wait_ready(f"127.0.0.1:{ports[name]}", 300)
        t0 = time.time()
        alternate(results, kinds, levels, args, api_key, member_ids, {n: (ports[n], p.pid) for n, p in servers.items()})
        results["worker_memory"] = [memory(pid) for pid in children(servers["serve"].pid)]
        results["recommend_wall_s"] = time.time() - t0
    finally:
        stop(servers.values())

    results["summary"] = table = summarise(results, kinds)
    print(f"{'server':<26} {'in flight':>9} {'QPS':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'degraded':>9} "
          f"{'vs echo':>8} {'CPU us':>7}  load 1m")
    for r in table:
        ratio = "" if r["kind"] == "echo" else f"{r['vs_echo']:.0%}"
        print(f"{r['kind']:<26} {r['in_flight']:>9} {r['qps']:>9,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['errors']:>7} {r['degraded']:>9} {ratio:>8} {r['cpu_us']:>7,.0f}  {r['load_1m']}")
    for i, mem in enumerate(results["worker_memory"]):  # type: ignore[arg-type]
        print(f"worker {i}: RSS {mem['rss_mib']:.0f} MiB, PSS {mem['pss_mib']:.0f} MiB")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
