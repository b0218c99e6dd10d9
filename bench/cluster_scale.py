"""Redis Cluster (3 masters on this machine) vs one Redis: materialisation members/s and Recommend QPS.

    .venv/bin/python bench/cluster_scale.py --data DIR --bundles ROOT [--rounds 2] [--seconds 5]

DATA is a retailer directory (`omnirec simulate --members 100000 --items 20000 --out DIR`); ROOT a bundle
root with a published bundle trained on it (`omnirec train --data DIR --bundles ROOT --force`; its quality
does not matter here). The cluster is the tests' (`tests/cluster.py`: 3 redis-servers on free loopback
ports, or `--cluster-port` and the next two, no replicas); the single Redis is the one on 127.0.0.1:6379
(database `--db`, bench keys under a private namespace deleted at the end).

Materialisation: the features are computed once, then loaded into each store `--rounds` times, alternating
which goes first; members/s is `Materializer`'s (first write to the generation switch), and the loader's
CPU per member (this process: encoding, slot routing, reply checks) is what to compare on a busy machine. Serving: one
`omnirec serve` per store (same bundle, same workers, each reading its store in the request's one
pipelined round trip) and the echo server of `bench/service_load.py` (grpc.aio with nothing behind it, the
ceiling), all started once; then each is loaded in turn, closed-loop, `--in-flight` requests for
`--seconds`, alternated over the rounds. Recommend asks for a random member with the purchase filter (one
feature-store read per call); each server's CPU per answered call (utime + stime of its worker processes
over the measured seconds, `service_load.worker_cpu_s`) is what carries over from a busy machine. Prints a
table with the load average and writes bench/results/cluster_scale.json.

On one machine the three masters share its cores with the servers and the client, so this measures the
cost of the cluster protocol (slot routing, one connection per master), not the capacity of three hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import redis
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from cluster import LocalCluster  # noqa: E402  (the tests' cluster: one way to start one)
from service_load import measure, wait_ready  # noqa: E402

from omnirec.config import OmnirecConfig  # noqa: E402
from omnirec.domain.readers import RetailData  # noqa: E402
from omnirec.feature_store.config import RedisConfig  # noqa: E402
from omnirec.feature_store.connection import connect  # noqa: E402
from omnirec.feature_store.materialize import Materializer, compute_features  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cluster_scale.json"
API_KEY = "bench-app-key"


def serve_config(path: Path, data: Path, bundles: Path, redis_config: RedisConfig, port: int, workers: int,
                 events: Path) -> Path:
    path.write_text(f"""data_dir = "{data}"
[train]
bundle_root = "{bundles}"
[redis]
url = "{redis_config.url}"
namespace = "{redis_config.namespace}"
[service]
host = "127.0.0.1"
port = {port}
workers = {workers}
event_log_dir = "{events}"
[service.api_keys]
"{API_KEY}" = "app"
""")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drop_namespace(config: RedisConfig) -> None:
    """Delete every key the bench wrote to the single Redis (the cluster's servers die with their data)."""
    client = connect(config, socket_timeout_s=60)
    try:
        for pattern in (f"{config.namespace}@*", f"{config.namespace}:*"):
            keys = list(client.scan_iter(match=pattern, count=10_000))
            for i in range(0, len(keys), 10_000):
                client.delete(*keys[i:i + 10_000])
    finally:
        client.close()


def materialise(features: object, stores: dict[str, RedisConfig], rounds: int) -> dict[str, list[dict[str, float]]]:
    """Members/s of each store's load, `rounds` times, alternating which store goes first."""
    loads: dict[str, list[dict[str, float]]] = {name: [] for name in stores}
    for r in range(rounds):
        for name in (list(stores) if r % 2 == 0 else list(reversed(stores))):
            client = connect(stores[name], socket_timeout_s=stores[name].bulk_timeout_s)
            cpu = time.process_time()
            try:
                report = Materializer(client, stores[name]).load(features)  # type: ignore[arg-type]
            finally:
                client.close()
            cpu = time.process_time() - cpu
            loads[name].append({"seconds": report.seconds, "members_per_s": report.members_per_s,
                                "client_cpu_s": cpu, "client_cpu_us_per_member": cpu / report.members * 1e6,
                                "commands": report.commands, "load_avg_1m": os.getloadavg()[0]})
            print(name, loads[name][-1], flush=True)
    return loads


def load_servers(ports: dict[str, int], pids: dict[str, int], members: np.ndarray, args: argparse.Namespace
                 ) -> dict[str, list[dict[str, float]]]:
    """Closed-loop QPS of each server in turn (echo: its empty call; the others: Recommend with the purchase
    filter), alternated, with the server's CPU per answered call."""
    qps: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
    for r in range(args.rounds):
        for name in (list(ports) if r % 2 == 0 else list(reversed(ports))):
            kind = "echo" if name == "echo" else "exclude_purchased"
            row = asyncio.run(measure(f"127.0.0.1:{ports[name]}", kind, [args.in_flight], args.seconds,
                                      API_KEY, members, args.connections, server_pid=pids[name]))[0]
            row["server_cpu_us_per_call"] = row["cpu_us"]
            row["load_avg_1m"] = os.getloadavg()[0]
            qps[name].append(row)
            print(name, row, flush=True)
    return qps


def serve_and_load(stores: dict[str, RedisConfig], members: np.ndarray, args: argparse.Namespace, tmp: Path,
                   servers: list[subprocess.Popen[bytes]]) -> dict[str, list[dict[str, float]]]:
    """Start the echo server and one `omnirec serve` per store (appended to `servers`, which the caller
    stops), then load each in turn."""
    ports = {name: free_port() for name in ("echo", *stores)}
    servers.append(subprocess.Popen([sys.executable, "-P", str(Path(__file__).parent / "service_load.py"),
                                     "--config", "/dev/null", "--data-dir", str(args.data), "--workers",
                                     str(args.workers), "--echo-server", str(ports["echo"])]))
    for name, store in stores.items():
        config = serve_config(tmp / f"{ports[name]}.toml", args.data, args.bundles, store, ports[name],
                              args.workers, tmp / f"events-{ports[name]}")
        servers.append(subprocess.Popen([str(Path(sys.executable).parent / "omnirec"), "serve"],
                                        env={**os.environ, "OMNIREC_CONFIG": str(config)}))
    for port in ports.values():
        wait_ready(f"127.0.0.1:{port}", timeout_s=600)
    pids = {name: server.pid for name, server in zip(ports, servers[-len(ports):], strict=True)}
    return load_servers(ports, pids, members, args)


def median(rows: list[dict[str, float]], key: str) -> float:
    return float(np.median([row[key] for row in rows]))


def summary(results: dict[str, object], members: int, load_start: tuple[float, float, float],
            args: argparse.Namespace) -> Table:
    loads: dict[str, list[dict[str, float]]] = results["materialise"]  # type: ignore[assignment]
    qps: dict[str, list[dict[str, float]]] = results.get("recommend", {})  # type: ignore[assignment]
    table = Table(title=f"{members:,} members, {args.rounds} alternating rounds (medians); load average "
                        f"{load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end, {os.cpu_count()} cpus")
    for column in ("store", "materialise members/s", "vs one Redis", "loader CPU us/member",
                   f"Recommend QPS ({args.in_flight} in flight)",
                   "p50 / p99 ms", "vs echo", "server CPU us/call", "errors / degraded"):
        table.add_column(column, justify="right")
    echo = median(qps["echo"], "qps") if qps else float("nan")
    if qps:
        table.add_row("echo (no store)", "", "", "", f"{echo:,.0f}", f"{median(qps['echo'], 'p50_ms'):.2f} / "
                      f"{median(qps['echo'], 'p99_ms'):.2f}", "100%",
                      f"{median(qps['echo'], 'server_cpu_us_per_call'):,.0f}", "")
    single = median(loads["one Redis"], "members_per_s")
    for name, rows in loads.items():
        rate = median(rows, "members_per_s")
        served = ["", "", "", "", ""]
        if qps:
            q = median(qps[name], "qps")
            served = [f"{q:,.0f}", f"{median(qps[name], 'p50_ms'):.2f} / {median(qps[name], 'p99_ms'):.2f}",
                      f"{q / echo:.0%}", f"{median(qps[name], 'server_cpu_us_per_call'):,.0f}",
                      f"{sum(int(r['errors']) for r in qps[name])} / "
                                         f"{sum(int(r['degraded']) for r in qps[name])}"]
        table.add_row(name, f"{rate:,.0f}", f"{rate / single:.0%}",
                      f"{median(rows, 'client_cpu_us_per_member'):.1f}", *served)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundles", type=Path, help="published bundle root for the serving part (none: skip it)")
    parser.add_argument("--db", type=int, default=7, help="database of the single Redis (not the tests' 1)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--cluster-port", type=int, help="the cluster's masters on this port and the next two "
                                                           "(default: free ports)")
    args = parser.parse_args()

    load_start = os.getloadavg()
    retail = RetailData.read(args.data)
    base = OmnirecConfig()
    t0 = time.perf_counter()
    features = compute_features(retail, base.tiers, base.lifecycle, recent_items=base.redis.recent_items,
                                purchased_items=base.redis.purchased_items)
    compute_s = time.perf_counter() - t0
    members = features.member_ids.to_numpy(zero_copy_only=False).astype(str)
    namespace = f"bench-cluster-{uuid.uuid4().hex[:8]}"
    results: dict[str, object] = {"data": str(args.data), "members": len(members), "compute_s": compute_s,
                                  "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                                  "workers": args.workers, "in_flight": args.in_flight, "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="omnirec-cluster-bench-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster", first_port=args.cluster_port)
        stores = {"one Redis": RedisConfig(url=f"redis://127.0.0.1:6379/{args.db}", namespace=namespace),
                  "Redis Cluster (3 masters)": RedisConfig(url=cluster.url, namespace=namespace)}
        servers: list[subprocess.Popen[bytes]] = []
        try:
            loads = materialise(features, stores, args.rounds)
            results["materialise"] = loads

            if args.bundles is not None:
                results["recommend"] = serve_and_load(stores, members, args, Path(tmp), servers)
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
            for server in servers:
                try:
                    server.wait(60)
                except subprocess.TimeoutExpired:
                    server.kill()
            cluster.stop()
            drop_namespace(stores["one Redis"])
    results["load_avg"] = {"start": load_start, "end": os.getloadavg()}

    table = summary(results, len(members), load_start, args)
    Console(width=160).print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    try:
        main()
    except redis.RedisError as exc:
        raise SystemExit(f"redis: {exc}") from None
