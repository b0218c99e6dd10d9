"""Real-time Recommend while a campaign audience streams from the same `omnirec serve`, against Recommend alone.

    .venv/bin/python bench/audience_isolation.py --members 1000000 --items 100000 --rounds 2

Set-up: a simulated retailer (`omnirec simulate`, 60 days) materialised into its own Redis database
(default `redis://127.0.0.1:6379/8`, namespace `bench-audrt`; `--keep-features` keeps it for the next run)
and a bundle written here with random d=32 factors and precomputed top-50 lists drawn at random (what
serving and scoring cost depends on the shapes, not the values; training a 1M-member model does not fit
beside the benchmark). `omnirec serve` runs as in production: the supervisor, 2 workers on one port;
Redis's per-command timeout is 5 s (not 0.5 s) so that, on a machine loaded by others, the older design's
pulls (on the request client) finish rather than time out.

One closed-loop grpc.aio client process keeps 8 Recommend calls in flight (random member, k=10, the
default request: answered from the bundle) over 4 connections, in windows that alternate: `quiet` (no
other traffic, `--quiet-s` seconds) and `audience` (while a separate client process streams an audience
over every member: a category target, channel app with consent, contact ledger and fatigue caps, holdout
10%; the window lasts until its last row). The order flips each round. An echo server (grpc.aio with
nothing behind it, 2 workers) is measured for 10 s first: the Recommend targets are >= 50% of its QPS and
p99 <= 10 ms at 8 in flight. `--server-src NAME=DIR` (repeatable) runs the same windows against the
omnirec package in DIR instead (e.g. `git archive` of an older commit plus its generated `omnirec/v1`),
server after server, in the same run.
Prints a table and writes bench/results/audience_isolation.json, with the load average of each window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from synthetic_bundle import write_bundle

RESULTS = Path(__file__).parent / "results" / "audience_isolation.json"
APP_KEY, CAMPAIGN_KEY = "bench-app-key", "bench-campaign-key"
IN_FLIGHT, CONNECTIONS = 8, 4


def write_config(path: Path, data_dir: Path, bundle_root: Path, redis_url: str, namespace: str, port: int) -> Path:
    path.write_text(f"""data_dir = "{data_dir.resolve()}"
[train]
bundle_root = "{bundle_root.resolve()}"
[redis]
url = "{redis_url}"
namespace = "{namespace}"
socket_timeout_s = 5.0
[offers]
decision_log_dir = "{(path.parent / 'decisions').resolve()}"
[service]
host = "127.0.0.1"
port = {port}
workers = 2
event_log_dir = "{(path.parent / 'events').resolve()}"
[service.api_keys]
"{APP_KEY}" = "app"
"{CAMPAIGN_KEY}" = "campaign"
""")
    return path


def stream_audience(port: int, category: str, max_size: int, out: mp.Queue) -> None:
    """The campaign job, in its own process (its row parsing must not slow the load generator)."""
    from omnirec.v1 import audience_pb2, audience_pb2_grpc, common_pb2

    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = audience_pb2_grpc.AudienceServiceStub(channel)
    request = audience_pb2.StreamAudienceRequest(audience=audience_pb2.AudienceSpec(
        channel=common_pb2.CHANNEL_APP, max_size=max_size, category_ids=[category], holdout_share=0.1,
        send_id="bench"), chunk_size=10_000)
    t0 = time.perf_counter()
    header_at, rows = 0.0, 0
    for message in stub.StreamAudience(request, metadata=[("x-api-key", CAMPAIGN_KEY)], timeout=900):
        if message.WhichOneof("payload") == "header":
            header_at = time.perf_counter()
        else:
            rows += len(message.chunk.member_ids)
    done = time.perf_counter()
    out.put({"rows": rows, "time_to_header_s": header_at - t0, "streaming_s": done - header_at,
             "end_to_end_s": done - t0})


async def load(port: int, member_ids: np.ndarray, until: asyncio.Event | None, seconds: float,
               method: str = "recommend") -> dict[str, float]:
    """8 closed-loop callers over 4 connections until `until` is set (or for `seconds`)."""
    from omnirec.v1 import common_pb2, recommendation_pb2, recommendation_pb2_grpc

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(CONNECTIONS)]
    for channel in channels:
        await channel.channel_ready()
    if method == "echo":
        payload = recommendation_pb2.RecommendRequest(member_id="m", channel=common_pb2.CHANNEL_APP,
                                                      k=10).SerializeToString()
        calls = [(lambda c: lambda rng: c(payload, timeout=5))(ch.unary_unary("/bench.Echo/Echo")) for ch in channels]
    else:
        metadata = (("x-api-key", APP_KEY),)

        def caller(channel: grpc.aio.Channel):  # type: ignore[no-untyped-def]
            stub = recommendation_pb2_grpc.RecommendationServiceStub(channel)
            return lambda rng: stub.Recommend(recommendation_pb2.RecommendRequest(
                member_id=str(member_ids[rng.integers(len(member_ids))]), channel=common_pb2.CHANNEL_APP, k=10),
                timeout=5, metadata=metadata)

        calls = [caller(ch) for ch in channels]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    def running() -> bool:
        return not until.is_set() if until is not None else time.perf_counter() < deadline

    async def user(i: int) -> None:
        nonlocal errors
        rng = np.random.default_rng(i)
        call = calls[i % len(calls)]
        while running():
            t0 = time.perf_counter()
            try:
                await call(rng)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - t0
    for channel in channels:
        await channel.close()
    lat = np.array(latencies) * 1000
    return {"seconds": round(elapsed, 1), "requests": len(lat), "errors": errors, "qps": len(lat) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()), "load_avg_1m": [load_before, os.getloadavg()[0]]}


async def audience_window(port: int, member_ids: np.ndarray, category: str) -> dict[str, object]:
    queue: mp.Queue = mp.get_context("spawn").Queue()
    job = mp.get_context("spawn").Process(target=stream_audience, args=(port, category, len(member_ids), queue))
    done = asyncio.Event()
    job.start()

    async def wait_job() -> None:
        await asyncio.to_thread(job.join)
        done.set()

    waiter = asyncio.create_task(wait_job())
    result = await load(port, member_ids, done, 0)
    await waiter
    result["audience"] = queue.get(timeout=10) if job.exitcode == 0 else {"failed": job.exitcode}
    return result


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.time() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(
                        service="omnirec.v1.AudienceService"), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("omnirec serve did not become healthy")
            time.sleep(0.5)


def run_server(name: str, src: Path | None, config: Path, port: int, member_ids: np.ndarray, category: str,
               rounds: int, quiet_s: float) -> list[dict[str, object]]:
    env = {**os.environ, "OMNIREC_CONFIG": str(config.resolve())}
    if src is not None:
        env["PYTHONPATH"] = str(src.resolve())
    log = (config.parent / f"serve-{name}.log").open("ab")  # one access-log line per call, as configured
    serve = subprocess.Popen([str(Path(sys.executable).parent / "omnirec"), "serve"], env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    windows: list[dict[str, object]] = []
    try:
        wait_ready(port, serve)
        asyncio.run(load(port, member_ids, None, 3))  # warm-up: connections, page cache
        for r in range(rounds):
            order = ("quiet", "audience") if r % 2 == 0 else ("audience", "quiet")
            for kind in order:
                if kind == "quiet":
                    row = asyncio.run(load(port, member_ids, None, quiet_s))
                else:
                    row = asyncio.run(audience_window(port, member_ids, category))
                row.update(server=name, window=kind, round=r)
                windows.append(row)
                print(f"  {name} round {r} {kind:<8} QPS {row['qps']:7,.0f} p50 {row['p50_ms']:6.2f} "
                      f"p99 {row['p99_ms']:6.2f} ms  load {row['load_avg_1m'][1]:.1f}"  # type: ignore[index]
                      + (f"  audience {row['audience']}" if kind == "audience" else ""), flush=True)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
        log.close()
    return windows


def echo(port: int, member_ids: np.ndarray) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "service_load.py"), "--config", "-",
                             "--data-dir", "-", "--workers", "2", "--echo-server", str(port)])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        return asyncio.run(load(port, member_ids, None, 10, method="echo"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--work-dir", type=Path, default=Path("var/bench/rt"))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    parser.add_argument("--namespace", default="bench-audrt")
    parser.add_argument("--port", type=int, default=50093)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quiet-s", type=float, default=30.0)
    parser.add_argument("--server-src", action="append", default=[], metavar="NAME=DIR",
                        help="measure the omnirec package in DIR (PYTHONPATH) instead of this checkout's")
    parser.add_argument("--keep-features", action="store_true", help="leave the materialised features in Redis")
    args = parser.parse_args()

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from omnirec.domain.lifecycle import LifecycleRules
    from omnirec.domain.tiers import TierLadder
    from omnirec.feature_store.config import RedisConfig
    from omnirec.feature_store.connection import connect
    from omnirec.feature_store.materialize import materialize
    from omnirec.simulator import SimulationConfig, simulate

    data_dir = args.work_dir / f"m{args.members}"
    if not (data_dir / "members.parquet").exists():
        simulate(SimulationConfig(n_members=args.members, n_items=args.items, days=60, seed=0), data_dir,
                 progress=True)
    redis_config = RedisConfig(url=args.redis_url, namespace=args.namespace)
    client = connect(redis_config)
    if not any(True for _ in client.scan_iter(match=f"{args.namespace}*", count=1000)):
        materialize(data_dir, redis_config, TierLadder(), LifecycleRules(), now=time.time(), progress=True)
    bundle_root = args.work_dir / f"bundles-m{args.members}"
    write_bundle(data_dir, bundle_root, args.dim)
    config = write_config(args.work_dir / "omnirec.toml", data_dir, bundle_root, args.redis_url, args.namespace,
                          args.port)
    member_ids = pq.read_table(data_dir / "members.parquet", columns=["member_id"])["member_id"] \
        .to_numpy(zero_copy_only=False).astype(str)
    counts = pc.value_counts(pq.read_table(data_dir / "items.parquet", columns=["category"])["category"]).to_pylist()
    category = str(max(counts, key=lambda c: c["counts"])["values"])

    result: dict[str, object] = {"members": args.members, "items": args.items, "in_flight": IN_FLIGHT,
                                 "connections": CONNECTIONS, "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                                 "target_category": category}
    try:
        result["echo"] = echo(args.port + 1, member_ids)
        print(f"echo: QPS {result['echo']['qps']:,.0f} p99 {result['echo']['p99_ms']:.2f} ms")  # type: ignore[index]
        servers = [(s.split("=", 1)[0], Path(s.split("=", 1)[1])) for s in args.server_src] or [("current", None)]
        windows = []
        for name, src in servers:
            windows += run_server(name, src, config, args.port, member_ids, category, args.rounds, args.quiet_s)
        result["windows"] = windows
    finally:
        if not args.keep_features:
            keys = list(client.scan_iter(match=f"{args.namespace}*", count=10_000))
            for i in range(0, len(keys), 10_000):
                client.delete(*keys[i:i + 10_000])

    echo_qps = result["echo"]["qps"]  # type: ignore[index]
    print("\n| server | window | QPS | vs echo | p50 ms | p99 ms | max ms | load avg | audience end to end s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for w in windows:
        aud = w.get("audience", {})
        print(f"| {w['server']} | {w['window']} | {w['qps']:,.0f} | {w['qps'] / echo_qps:.0%} | {w['p50_ms']:.2f} "
              f"| {w['p99_ms']:.2f} | {w['max_ms']:.1f} | {w['load_avg_1m'][1]:.1f} | "  # type: ignore[index]
              f"{aud.get('end_to_end_s', 0):.1f} |")  # type: ignore[union-attr]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
