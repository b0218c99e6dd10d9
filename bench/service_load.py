"""Closed-loop load on loopback: Recommend on `omnirec serve` next to an empty grpc.aio echo server.

    .venv/bin/python bench/service_load.py --config var/bench/omnirec.toml --data-dir var/bench/data

Set-up used for the README figures: `omnirec simulate --members 1000000 --items 100000`, `omnirec train`,
`omnirec materialize` with a config whose `[redis]` points at a database of its own (e.g.
`redis://127.0.0.1:6379/7`; the tests use database 1): millions of bench keys in a tests' database slow
their key scans. The config needs `[service] port`, `workers` and an `app` key in `[service.api_keys]`; the echo server
listens on port + 1.

Both servers run as separate processes with the same number of workers; the load generator is one
grpc.aio client process over `--connections` TCP connections (4: the kernel balances connections, not
requests, across the workers) that keeps 1, 8 and 64 requests in flight for `--seconds` each (Recommend for a
random member, k=10, with and without the purchase filter). Counts failed and degraded answers (a degraded
Recommend skipped its feature-store read, so its speed is not the real path's). Prints a table,
writes bench/results/service_load.json, and reports resident (RSS) and proportional (PSS: shared pages
split between the processes mapping them) memory per serving worker.
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
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import uvloop

from omnirec.config import OmnirecConfig
from omnirec.v1 import common_pb2, recommendation_pb2, recommendation_pb2_grpc

ECHO_METHOD = "/bench.Echo/Echo"
KINDS = ("recommend", "recommend_model_only")
"""`recommend`: exclude_purchased (one feature-store read per call); `recommend_model_only`: without it,
so a member the model knows is answered from the bundle alone."""
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
                  member_ids: np.ndarray, connections: int) -> list[dict[str, float]]:
    """Closed-loop load over `connections` TCP connections: the kernel spreads connections, not requests,
    over the processes sharing the port (SO_REUSEPORT), so one connection would load one worker only."""
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

            def make(rng: np.random.Generator) -> recommendation_pb2.RecommendRequest:
                return recommendation_pb2.RecommendRequest(
                    member_id=str(member_ids[rng.integers(len(member_ids))]), channel=common_pb2.CHANNEL_APP,
                    k=10, exclude_purchased=kind == "recommend")
        for channel in channels:
            await channel.channel_ready()
        await _closed_loop(calls, make, 8, min(seconds, 2.0))  # warm-up: connections, page cache, JIT-free paths
        return [await _closed_loop(calls, make, level, seconds) for level in levels]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="omnirec config (bundle root, redis, api key)")
    parser.add_argument("--data-dir", type=Path, required=True, help="simulated data: member ids to ask for")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--levels", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=4,
                        help="client TCP connections (spread over the server's workers by the kernel)")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server, args.workers)
        return

    config, api_key, member_ids, levels, env = setup(args)
    port = config.service.port
    results: dict[str, object] = {"workers": args.workers, "connections": args.connections,
                                  "seconds_per_level": args.seconds,
                                  "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                                  "members": len(member_ids)}

    echo_port = port + 1
    echo = subprocess.Popen([sys.executable, "-P", __file__, "--config", str(args.config),
                             "--data-dir", str(args.data_dir), "--workers", str(args.workers),
                             "--echo-server", str(echo_port)])
    try:
        wait_ready(f"127.0.0.1:{echo_port}")
        results["echo"] = asyncio.run(measure(f"127.0.0.1:{echo_port}", "echo", levels, args.seconds, api_key,
                                              member_ids, args.connections))
    finally:
        echo.send_signal(signal.SIGTERM)
        echo.wait(30)

    serve = subprocess.Popen([str(Path(sys.executable).parent / "omnirec"), "serve", "--workers", str(args.workers)],
                             env=env)
    try:
        wait_ready(f"127.0.0.1:{port}")
        t0 = time.time()
        for kind in KINDS:
            results[kind] = asyncio.run(measure(f"127.0.0.1:{port}", kind, levels, args.seconds, api_key, member_ids,
                                                args.connections))
        results["worker_memory"] = [memory(pid) for pid in children(serve.pid)]
        results["recommend_wall_s"] = time.time() - t0
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)

    print(f"{'server':<22} {'in flight':>9} {'QPS':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'degraded':>9} "
          f"{'vs echo':>8}")
    for i, echo_row in enumerate(results["echo"]):  # type: ignore[arg-type]
        for name in ("echo", *KINDS):
            row = results[name][i]  # type: ignore[index]
            ratio = f"{row['qps'] / echo_row['qps']:.0%}" if name != "echo" else ""
            print(f"{name:<22} {row['in_flight']:>9} {row['qps']:>9,.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
                  f"{row['errors']:>7} {row['degraded']:>9} {ratio:>8}")
    for i, mem in enumerate(results["worker_memory"]):  # type: ignore[arg-type]
        print(f"worker {i}: RSS {mem['rss_mib']:.0f} MiB, PSS {mem['pss_mib']:.0f} MiB")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
