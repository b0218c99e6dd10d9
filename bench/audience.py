"""An audience over every member, scored, suppressed and streamed to a gRPC client, end to end.

    .venv/bin/python bench/audience.py --members 1000000 --items 100000
    .venv/bin/python bench/audience.py --data-dir DIR --redis-url URL --namespace NS --keep-features  # reuse a load

Set-up: a simulated retailer (`omnirec simulate`) materialised into its own Redis database (default
`redis://127.0.0.1:6379/7`, namespace `bench-audience`, removed afterwards); member and item factors
drawn at random (d=32): scoring cost depends on the shapes, not the values, and a 1M-member training
run does not fit beside the benchmark. The server is a separate process running `AudienceService`
alone (the service's servicer, builder and stores, one worker); the client streams one audience with
`max_size` = every member and the filters a win-back campaign would use (channel app with consent,
contact ledger and fatigue caps). Reports time to the header (scoring + suppression reads), streaming
time, rows/s, the server's scoring and suppression stages, the CPU seconds the audience process and the
serving process spent on the pull (/proc, robust to other jobs' load), the peak RSS of both, and the load
average; writes bench/results/audience.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import grpc
import numpy as np

RESULTS = Path(__file__).parent / "results" / "audience.json"
KEY = "bench-campaign-key"


def _serve(data_dir: Path, redis_url: str, namespace: str, dim: int, port: int, stages: mp.Queue) -> None:
    import asyncio

    import pyarrow.parquet as pq

    from omnirec.audience import AudienceBuilder, AudienceSources, Campaigns, FactorModel
    from omnirec.config import OmnirecConfig
    from omnirec.domain.idmap import IdMap
    from omnirec.domain.lifecycle import LifecycleRules
    from omnirec.domain.tiers import TierLadder
    from omnirec.feature_store.config import RedisConfig
    from omnirec.feature_store.connection import connect, connect_async
    from omnirec.feature_store.reader import FeatureReader
    from omnirec.offers.catalogue import load_catalogue
    from omnirec.offers.config import EXAMPLE_CATALOGUE, OfferConfig
    from omnirec.offers.decision_log import DecisionLog
    from omnirec.offers.engine import selection
    from omnirec.offers.store import OfferStore
    from omnirec.service import audience_process, audience_servicer
    from omnirec.service.config import Role
    from omnirec.service.interceptors import ApiInterceptor

    config = RedisConfig(url=redis_url, namespace=namespace)
    client = connect(config)
    members = pq.read_table(data_dir / "members.parquet", columns=["member_id"])["member_id"]
    item_ids = IdMap.from_ids(pq.read_table(data_dir / "items.parquet", columns=["item_id"])["item_id"]
                              .to_numpy(zero_copy_only=False))
    rng = np.random.default_rng(0)
    model = FactorModel("bench", IdMap.from_ids(members.to_numpy(zero_copy_only=False)),
                        rng.standard_normal((len(members), dim), np.float32), item_ids,
                        rng.standard_normal((len(item_ids), dim), np.float32))
    store = OfferStore(connect_async(config), config, sync_client=client)
    reader = FeatureReader(client, config)
    columns = {}
    if hasattr(reader, "profile_columns"):  # not in a copy from before the column-wise reads (PYTHONPATH=OLD)
        from omnirec.audience.ledger import ledger_reader
        columns = {"profile_columns": reader.profile_columns, "ledger": ledger_reader(store)}
    sources = AudienceSources(model, None, load_catalogue(EXAMPLE_CATALOGUE),
                              lambda t: reader.selection_items([selection(t)])[1][0], reader.profiles,
                              store.marketing_states, **columns)
    campaigns = Campaigns(AudienceBuilder(TierLadder(), LifecycleRules(), OfferConfig().fatigue), lambda: sources,
                          store, DecisionLog(data_dir / "bench-decisions"))
    pull = campaigns.pull

    def timed_pull(*args, **kwargs):  # type: ignore[no-untyped-def]
        audience = pull(*args, **kwargs)
        stages.put(dict(audience.timings))
        return audience

    campaigns.pull = timed_pull  # type: ignore[method-assign]

    async def make():  # type: ignore[no-untyped-def]
        return campaigns, []

    async def main(jobs: audience_process.AudienceJobs) -> None:
        spec = audience_servicer.spec(jobs, TierLadder(), {KEY: Role.CAMPAIGN})
        server = grpc.aio.server(interceptors=[ApiInterceptor({KEY: Role.CAMPAIGN}, spec.method_roles)])
        spec.add_to_server(spec.servicer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    with audience_process.running(OmnirecConfig(), make) as jobs:
        asyncio.run(main(jobs))


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--data-dir", type=Path, default=None, help="Reuse a simulated retailer (default: simulate)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--namespace", default="bench-audience")
    parser.add_argument("--port", type=int, default=50091)
    parser.add_argument("--keep-features", action="store_true",
                        help="use the features already materialised under --namespace (materialise only when none "
                             "are) and leave them in Redis afterwards")
    args = parser.parse_args()

    from omnirec.domain.lifecycle import LifecycleRules
    from omnirec.domain.tiers import TierLadder
    from omnirec.feature_store.config import RedisConfig
    from omnirec.feature_store.connection import connect
    from omnirec.feature_store.keys import Keys
    from omnirec.feature_store.materialize import materialize
    from omnirec.simulator import SimulationConfig, simulate
    from omnirec.v1 import audience_pb2, audience_pb2_grpc, common_pb2

    data_dir = args.data_dir or Path("var/bench/audience") / f"m{args.members}"
    if not (data_dir / "members.parquet").exists():
        print(f"simulating {args.members:,} members, {args.items:,} items into {data_dir} ...")
        simulate(SimulationConfig(n_members=args.members, n_items=args.items, seed=0), data_dir, progress=True)
    namespace = args.namespace
    redis_config = RedisConfig(url=args.redis_url, namespace=namespace)
    if not args.keep_features or connect(redis_config).hget(Keys(namespace).pointer(), "generation") is None:
        print("materialising ...")
        materialize(data_dir, redis_config, TierLadder(), LifecycleRules(), now=time.time(), progress=True)
    stages: mp.Queue = mp.get_context("spawn").Queue()
    server = mp.get_context("spawn").Process(target=_serve, args=(data_dir, args.redis_url, namespace, args.dim,
                                                                  args.port, stages))
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{args.port}",
                                        options=[("grpc.max_receive_message_length", 64 << 20)])
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = audience_pb2_grpc.AudienceServiceStub(channel)
        import pyarrow.parquet as pq

        categories = pq.read_table(data_dir / "items.parquet", columns=["category"])["category"]
        top = max(set(categories.to_pylist()), key=categories.to_pylist().count)
        request = audience_pb2.StreamAudienceRequest(audience=audience_pb2.AudienceSpec(
            channel=common_pb2.CHANNEL_APP, max_size=args.members, category_ids=[top], holdout_share=0.1,
            send_id="bench"), chunk_size=10_000)
        audience_pid = max(_children(server.pid))
        cpu0 = _cpu_s(server.pid), _cpu_s(audience_pid)
        t0 = time.perf_counter()
        header_at, rows = None, 0
        for message in stub.StreamAudience(request, metadata=[("x-api-key", KEY)], timeout=600):
            if header_at is None:
                header_at = time.perf_counter()
                header = message.header
            else:
                rows += len(message.chunk.member_ids)
        done = time.perf_counter()
        cpu = _cpu_s(server.pid) - cpu0[0], _cpu_s(audience_pid) - cpu0[1]
        timings = stages.get(timeout=10)
        peak = _peak_rss_mib(server.pid)
        peak_audience = max(_peak_rss_mib(child) for child in _children(server.pid))
    finally:
        server.terminate()
        server.join(10)
        if not args.keep_features:
            client = connect(redis_config)
            keys = list(client.scan_iter(match=f"{namespace}*", count=10_000))
            for i in range(0, len(keys), 10_000):
                client.delete(*keys[i:i + 10_000])
    result = {
        "members": args.members, "items": args.items, "dim": args.dim, "target_category": top,
        "audience_rows": rows, "holdout": header.holdout_count, "examined": header.examined,
        "suppressed": dict(header.suppressed), "server_scoring_s": round(timings["scoring"], 2),
        "server_suppression_s": round(timings["suppression"], 2), "time_to_header_s": round(header_at - t0, 2),
        "streaming_s": round(done - header_at, 2), "end_to_end_s": round(done - t0, 2),
        "rows_per_s_streamed": round(rows / max(done - header_at, 1e-9)),
        "audience_process_cpu_s": round(cpu[1], 2),
        "audience_process_cpu_us_per_member": round(cpu[1] / max(header.examined, 1) * 1e6, 2),
        "server_cpu_s": round(cpu[0], 2), "server_peak_rss_mib": round(peak),
        "audience_process_peak_rss_mib": round(peak_audience),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print("| measure | value |\n|---|---:|")
    for k, v in result.items():
        print(f"| {k} | {v if not isinstance(v, int) else f'{v:,}'} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
