"""Closed-loop load on loopback: NextBestOffer and DecideCoupon on `omnirec serve` next to an empty echo server.

    .venv/bin/python bench/offer_load.py --config var/bench/omnirec.toml --data-dir var/bench/data --label after

Set-up (as `bench/service_load.py`): `omnirec simulate`, `omnirec train`, `omnirec publish` and
`omnirec materialize` with a config whose `[redis]` points at a database of its own (not the tests'
database 1), `[service] port`, `workers` and an `app` key in `[service.api_keys]`. The README's figures
use 100,000 members and 20,000 items (see the Offers section).

Both servers run at once as separate processes with the same number of workers (the echo server of
`bench/service_load.py`, on port + 1); one grpc.aio client process keeps 1, 8 and 64 requests in flight
over `--connections` TCP connections, and at each level the runs alternate: echo, then each offer call,
`--rounds` times, so a change in the machine's load hits all of them alike. Calls: NextBestOffer
(random member, app, k=3; also with `shown=true` where the contract has that flag) and DecideCoupon
(random member, app, a fresh request id per call). Counts errors by status code and the coupons
issued. Besides QPS and latency it reports each server's worker CPU time per answered request (utime +
stime from /proc, as `bench/metrics_cost.py`): on a shared, oversubscribed machine QPS swings with the
neighbours' load, the CPU a request costs much less.

`--baseline DIR` also serves the same calls from another copy of the code (a third server, on port + 2,
run with `PYTHONPATH=DIR` and `python -P`, so that the working directory's copy does not shadow it),
alternated with the others in every round: a before/after in one run, e.g.

    git archive main | tar -x -C /tmp/base && cp -r omnirec/v1 /tmp/base/omnirec/
    .venv/bin/python bench/offer_load.py ... --baseline /tmp/base

Its rows are named `before:<call>`. Prints a table and writes bench/results/offer_load-<label>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import service_load  # the echo server (bench/ is on sys.path when this file runs as a script)
import uvloop
from metrics_cost import worker_cpu_s

from omnirec.v1 import common_pb2, offers_pb2, offers_pb2_grpc

ECHO_METHOD = service_load.ECHO_METHOD
HAS_SHOWN = "shown" in offers_pb2.NextBestOfferRequest.DESCRIPTOR.fields_by_name
KINDS = ("next_best_offer", *(("next_best_offer_shown",) if HAS_SHOWN else ()), "decide_coupon")
RESULTS = Path(__file__).parent / "results"


class Client:
    """`connections` channels to one server and the request each kind of call sends."""

    def __init__(self, target: str, connections: int, api_key: str, member_ids: np.ndarray) -> None:
        # A local subchannel pool per channel: otherwise channels to one target share one connection.
        self.channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                         for _ in range(connections)]
        self.metadata = (("x-api-key", api_key),)
        self.member_ids = member_ids
        self.stubs = [offers_pb2_grpc.OfferServiceStub(c) for c in self.channels]
        self.echo = [c.unary_unary(ECHO_METHOD) for c in self.channels]
        self.echo_payload = offers_pb2.NextBestOfferRequest(member_id="m0000000", channel=common_pb2.CHANNEL_APP,
                                                            k=3).SerializeToString()

    async def ready(self) -> None:
        for channel in self.channels:
            await channel.channel_ready()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    def call(self, kind: str, user: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
        """An awaitable call of `kind` for a random member on connection `user mod connections`."""
        i = user % len(self.channels)
        if kind == "echo":
            return self.echo[i](self.echo_payload, timeout=5)
        member = str(self.member_ids[rng.integers(len(self.member_ids))])
        if kind.startswith("next_best_offer"):
            request = offers_pb2.NextBestOfferRequest(member_id=member, channel=common_pb2.CHANNEL_APP, k=3)
            if kind == "next_best_offer_shown":
                request.shown = True
            return self.stubs[i].NextBestOffer(request, timeout=5, metadata=self.metadata)
        request = offers_pb2.DecideCouponRequest(request_id=uuid.uuid4().hex, member_id=member,
                                                 channel=common_pb2.CHANNEL_APP)
        return self.stubs[i].DecideCoupon(request, timeout=5, metadata=self.metadata)


async def closed_loop(client: Client, kind: str, in_flight: int, seconds: float,
                      server_pid: int | None = None, label: str | None = None) -> dict[str, object]:
    """`in_flight` users, each sending its next request as soon as the last one is answered; with
    `server_pid`, the CPU its workers spent per answered request."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    issued = degraded = 0
    deadline = time.perf_counter() + seconds

    async def user(seed: int) -> None:
        nonlocal issued, degraded
        rng = np.random.default_rng(seed)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                reply = await client.call(kind, seed, rng)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            issued += bool(getattr(reply, "issued", False))
            degraded += bool(getattr(reply, "degraded", False))

    cpu0 = worker_cpu_s(server_pid) if server_pid else 0.0
    t0 = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(in_flight)))
    elapsed = time.perf_counter() - t0
    cpu = worker_cpu_s(server_pid) - cpu0 if server_pid else 0.0
    lat = np.array(latencies) * 1000
    return {"kind": label or kind, "in_flight": in_flight, "requests": len(lat), "errors": dict(errors),
            "issued": issued, "degraded": degraded, "qps": len(lat) / elapsed,
            "cpu_us": cpu * 1e6 / len(lat) if len(lat) else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else 0.0,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else 0.0}


async def measure(port: int, api_key: str, member_ids: np.ndarray, levels: list[int], seconds: float,
                  rounds: int, connections: int, pids: dict[str, int]) -> list[dict[str, object]]:
    """`pids`: the echo server's, the offer server's and (with a baseline) the baseline server's process ids."""
    echo = Client(f"127.0.0.1:{port + 1}", connections, api_key, member_ids)
    offers = Client(f"127.0.0.1:{port}", connections, api_key, member_ids)
    runs = [("echo", "echo", echo, pids["echo"]), *((k, k, offers, pids["offers"]) for k in KINDS)]
    clients = [echo, offers]
    if "baseline" in pids:
        before = Client(f"127.0.0.1:{port + 2}", connections, api_key, member_ids)
        clients.append(before)
        runs += [(k, f"before:{k}", before, pids["baseline"]) for k in KINDS]
    try:
        for client in clients:
            await client.ready()
        for kind, _, client, _ in runs:  # warm-up: connections, page cache, lazily loaded state
            await closed_loop(client, kind, 8, min(seconds, 2.0))
        rows = []
        for level in levels:
            for _ in range(rounds):
                for kind, label, client, pid in runs:
                    rows.append(await closed_loop(client, kind, level, seconds, pid, label))
                    print(f"  {label:<29} {level:>3} in flight: {rows[-1]['qps']:>8,.0f} QPS "
                          f"{rows[-1]['cpu_us']:>7,.0f} us CPU per call", flush=True)
        return rows
    finally:
        for client in clients:
            await client.close()


def wait_ready(target: str, timeout_s: float = 180) -> None:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)


def summarise(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per kind and level: the rounds pooled (QPS and latency percentiles averaged, worker CPU per call the
    median), with QPS vs echo."""
    out = []
    keys = sorted({(r["in_flight"], r["kind"]) for r in rows}, key=lambda k: (k[0], k[1] != "echo", k[1]))
    echo_qps = {}
    for level, kind in keys:
        runs = [r for r in rows if r["in_flight"] == level and r["kind"] == kind]
        errors: Counter[str] = Counter()
        for r in runs:
            errors.update(r["errors"])  # type: ignore[arg-type]
        row = {"kind": kind, "in_flight": level, "rounds": len(runs),
               "qps": float(np.mean([r["qps"] for r in runs])),
               "p50_ms": float(np.mean([r["p50_ms"] for r in runs])),
               "p99_ms": float(np.mean([r["p99_ms"] for r in runs])),
               "cpu_us": float(np.median([r["cpu_us"] for r in runs])),
               "requests": sum(r["requests"] for r in runs), "errors": dict(errors),
               "issued": sum(r["issued"] for r in runs), "degraded": sum(r["degraded"] for r in runs)}
        if kind == "echo":
            echo_qps[level] = row["qps"]
        row["vs_echo"] = row["qps"] / echo_qps[level]
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="omnirec config (redis, port, api key)")
    parser.add_argument("--data-dir", type=Path, required=True, help="simulated data: member ids to ask for")
    parser.add_argument("--label", default="run", help="names the results file (e.g. before, after)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--levels", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each kind per level")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--baseline", type=Path, help="another copy of the code to serve the same calls (before)")
    args = parser.parse_args()

    config, api_key, member_ids, levels, env = service_load.setup(args)
    port = config.service.port
    echo = subprocess.Popen([sys.executable, "-P", service_load.__file__, "--config", str(args.config), "--data-dir",
                             str(args.data_dir), "--workers", str(args.workers), "--echo-server", str(port + 1)])
    servers = {"echo": echo,
               "offers": subprocess.Popen([sys.executable, "-P", "-m", "omnirec", "serve", "--workers",
                                           str(args.workers)], env=env)}
    if args.baseline:
        servers["baseline"] = subprocess.Popen(
            [sys.executable, "-P", "-m", "omnirec", "serve", "--workers", str(args.workers), "--port", str(port + 2)],
            env={**env, "PYTHONPATH": str(args.baseline.resolve())})
    try:
        for name in servers:
            wait_ready(f"127.0.0.1:{port + {'offers': 0, 'echo': 1, 'baseline': 2}[name]}")
        t0 = time.time()
        rows = uvloop.run(measure(port, api_key, member_ids, levels, args.seconds, args.rounds, args.connections,
                                  {name: p.pid for name, p in servers.items()}))
        wall = time.time() - t0
    finally:
        service_load.stop(servers.values())

    table = summarise(rows)
    print(f"{'call':<29} {'in flight':>9} {'QPS':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs echo':>8} {'CPU us':>7} "
          f"{'issued':>7} {'degraded':>9}  errors")
    for r in table:
        ratio = "" if r["kind"] == "echo" else f"{r['vs_echo']:.0%}"
        print(f"{r['kind']:<29} {r['in_flight']:>9} {r['qps']:>9,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{ratio:>8} {r['cpu_us']:>7,.0f} {r['issued']:>7} {r['degraded']:>9}  {r['errors'] or ''}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"offer_load-{args.label}.json"
    out.write_text(json.dumps({
        "label": args.label, "workers": args.workers, "connections": args.connections,
        "seconds_per_run": args.seconds, "rounds": args.rounds, "members": len(member_ids),
        "baseline": str(args.baseline) if args.baseline else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "load_average": os.getloadavg(),
        "wall_s": wall, "summary": table, "runs": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
