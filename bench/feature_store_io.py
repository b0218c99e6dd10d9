"""Feature-store throughput and latency against the local Redis.

Materialises N simulated members (generated once into /tmp) and reports members/s for the load, then
times sequential request reads next to a baseline measured in the same run: one raw HGETALL round trip
of the same member record (GET). Redis's own time per command (INFO commandstats) shows how much of the load is
server work. Everything it writes lives under a private namespace that is deleted at the end.

Run by hand: `.venv/bin/python bench/feature_store.py [--members 100000] [--reads 2000]`.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Annotated

import numpy as np
import redis
import typer
from rich.console import Console
from rich.table import Table

from omnirec.domain import LifecycleRules, TierLadder
from omnirec.domain.readers import RetailData
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.materialize import Materializer, compute_features
from omnirec.feature_store.reader import FeatureReader
from omnirec.simulator import SimulationConfig, simulate

RESULTS = Path(__file__).parent / "results" / "feature_store_io.json"


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def server_usec(client: redis.Redis) -> dict[str, dict[str, float]]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): {"calls": v["calls"], "usec_per_call": v["usec_per_call"]}
            for k, v in stats.items() if k.removeprefix("cmdstat_") in ("set", "hset", "expire")}


def main(
    members: Annotated[int, typer.Option(help="Simulated members to materialise.")] = 100_000,
    items: Annotated[int, typer.Option(help="Items in the simulated catalogue.")] = 20_000,
    reads: Annotated[int, typer.Option(help="Sequential request reads to time.")] = 2_000,
    request_items: Annotated[int, typer.Option(help="Candidate items per full request read.")] = 20,
    url: Annotated[str, typer.Option(help="Redis to load into.")] = "redis://127.0.0.1:6379/0",
    data: Annotated[Path | None, typer.Option(help="Retail files (default: simulate into /tmp).")] = None,
) -> None:
    """Benchmark materialisation and request reads; prints a table and writes bench/results/feature_store_io.json."""
    data = data or Path(f"/tmp/omnirec-bench-fs-{members}")
    if not (data / "events.parquet").exists():
        simulate(SimulationConfig(n_members=members, n_items=items), data, progress=False)
    config = RedisConfig(url=url, namespace=f"bench-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    retail = RetailData.read(data)
    features = compute_features(retail, TierLadder(), LifecycleRules(), recent_items=config.recent_items,
                                purchased_items=config.purchased_items)
    computed = time.perf_counter() - started
    bulk = connect(config, socket_timeout_s=config.bulk_timeout_s)
    client = connect(config)
    try:
        bulk.config_resetstat()
        report = Materializer(bulk, config).load(features, progress=True)
        usec = server_usec(bulk)
        rng = np.random.default_rng(0)
        all_members = features.member_ids.to_numpy(zero_copy_only=False)
        member_ids = all_members[rng.integers(0, len(all_members), reads)]
        item_ids = features.item_ids.to_numpy(zero_copy_only=False)
        stores = retail.stores["store_id"].to_pylist() + [None]
        reader = FeatureReader(client, config)
        k = Keys(config.namespace, report.generation)
        timings: dict[str, list[float]] = {"baseline GET": [], "read_request (member)": [],
                                           f"read_request (member + {request_items} items + store)": []}
        for j, m in enumerate(member_ids.tolist()):
            candidates = item_ids[rng.integers(0, len(item_ids), request_items)].tolist()
            store = stores[j % len(stores)]
            for name, call in (("baseline GET", lambda m=m: client.get(k.member(m))),
                               ("read_request (member)", lambda m=m: reader.read_request(m)),
                               (f"read_request (member + {request_items} items + store)",
                                lambda m=m, c=candidates, s=store: reader.read_request(m, item_ids=c, store_id=s))):
                t = time.perf_counter()
                call()
                timings[name].append(time.perf_counter() - t)
    finally:
        for pattern in (f"{config.namespace}@*", f"{config.namespace}:*"):
            keys = list(bulk.scan_iter(match=pattern, count=10_000))
            for i in range(0, len(keys), 10_000):
                bulk.delete(*keys[i:i + 10_000])
        bulk.close()
        client.close()

    lat = {name: percentiles(t) for name, t in timings.items()}
    base = lat["baseline GET"]["p50_ms"]
    result = {
        "members": report.members, "items": report.items, "commands": report.commands,
        "compute_seconds": computed, "load_seconds": report.seconds, "load_members_per_s": report.members_per_s,
        "end_to_end_members_per_s": report.members / (computed + report.seconds),
        "redis_usec_per_call": usec, "reads": lat,
        "ratio_p50_vs_baseline": {n: v["p50_ms"] / base for n, v in lat.items()},
    }
    table = Table(title=f"feature store: {members:,} members into {url}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("load (write + switch)", f"{report.seconds:.2f} s, {report.commands:,} commands")
    table.add_row("members/s (load)", f"{report.members_per_s:,.0f}")
    table.add_row("members/s (read files + compute + load)", f"{result['end_to_end_members_per_s']:,.0f}")
    for cmd, v in usec.items():
        table.add_row(f"Redis time per {cmd.upper()}", f"{v['usec_per_call']:.1f} us x {v['calls']:,}")
    for name, v in lat.items():
        table.add_row(f"{name} p50 / p99", f"{v['p50_ms']:.3f} / {v['p99_ms']:.3f} ms "
                                           f"({v['p50_ms'] / base:.1f}x baseline p50)")
    Console(width=140).print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
