"""CPU per Recommend call in one process, per intent, without a server or a load generator.

    .venv/bin/python bench/recommend_cost.py --config var/bench/omnirec.toml --data-dir var/bench/data [--profile]

Builds a worker's parts as `omnirec serve` does (`service.wiring`: the published bundle, the config's
Redis) and calls `RecommendationServicer.Recommend` one call after another on uvloop for random members,
k=10, for each request kind of `bench/service_load.py` (no intent, BUY_AGAIN, DISCOVER, the purchase
filter), the kinds alternating round by round. What it measures is this process's CPU time per call
(`time.process_time`: the engine, the feature-store read on redis-py's asyncio client, the reply proto),
which barely depends on how loaded the shared machine is, and the wall time per call (the Redis round
trip included, so that one does). gRPC's own cost and the interceptors are not in it (`service_load.py`
measures the whole server). `--profile` prints the functions that take the most CPU time per kind.
Writes bench/results/recommend_cost-<label>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import uvloop
from profiling import print_profiles
from threadpoolctl import threadpool_limits

from omnirec.config import OmnirecConfig
from omnirec.service import recommendation_servicer, wiring
from omnirec.service.bundles import holder_for
from omnirec.v1 import common_pb2, recommendation_pb2

RESULTS = Path(__file__).parent / "results"
KINDS = {
    "mixed_default": {},
    "buy_again": {"intent": recommendation_pb2.INTENT_BUY_AGAIN},
    "discover": {"intent": recommendation_pb2.INTENT_DISCOVER},
    "exclude_purchased": {"exclude_purchased": True},
}
"""The request kinds of `bench/service_load.py`."""


class _Context:
    """The one thing the servicer asks of a grpc.aio context: the caller's deadline (none here)."""

    @staticmethod
    def time_remaining() -> None:
        return None


async def _run(servicer: recommendation_servicer.RecommendationServicer, kind: str, members: np.ndarray,
               calls: int, seed: int, profile: cProfile.Profile | None) -> tuple[float, float, int]:
    """(CPU us per call, wall us per call, degraded answers) for `calls` sequential calls."""
    rng = np.random.default_rng(seed)
    requests = [recommendation_pb2.RecommendRequest(member_id=str(m), channel=common_pb2.CHANNEL_APP, k=10,
                                                    **KINDS[kind])
                for m in members[rng.integers(len(members), size=calls)]]
    context = _Context()
    degraded = 0
    if profile is not None:
        profile.enable()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for request in requests:
        reply = await servicer.Recommend(request, context)
        degraded += reply.info.degraded
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if profile is not None:
        profile.disable()
    return cpu * 1e6 / calls, wall * 1e6 / calls, degraded


async def measure(config: OmnirecConfig, members: np.ndarray, kinds: list[str], calls: int, rounds: int,
                  profile: bool) -> dict[str, object]:
    models = holder_for(config.train.bundle_root, config.data_dir, config.recommendations)
    parts = wiring.build(config, models)
    await models.reload()
    servicer = recommendation_servicer.RecommendationServicer(models, parts.features,
                                                              config.service.default_deadline_s)
    try:
        for kind in kinds:  # warm-up: connections, page cache of the bundle's rows
            await _run(servicer, kind, members, 500, 0, None)
        cpu: dict[str, list[float]] = {k: [] for k in kinds}
        wall: dict[str, list[float]] = {k: [] for k in kinds}
        degraded = dict.fromkeys(kinds, 0)
        profiles = {k: cProfile.Profile(time.process_time) for k in kinds} if profile else {}
        for r in range(rounds):
            for kind in kinds:
                c, w, d = await _run(servicer, kind, members, calls, r + 1, profiles.get(kind))
                cpu[kind].append(c)
                wall[kind].append(w)
                degraded[kind] += d
                print(f"  round {r + 1} {kind:<18} {c:>8.0f} us CPU {w:>8.0f} us wall per call", flush=True)
        print_profiles(profiles, 25)
        return {"cpu_us": cpu, "wall_us": wall, "degraded": degraded}
    finally:
        await parts.features.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="omnirec config (bundle root, redis)")
    parser.add_argument("--data-dir", type=Path, required=True, help="simulated data: member ids to ask for")
    parser.add_argument("--label", default="run", help="names the results file (e.g. before, after)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"request kinds, of {', '.join(KINDS)}")
    parser.add_argument("--calls", type=int, default=2000, help="calls per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print cProfile tables per kind of call")
    args = parser.parse_args()

    config = OmnirecConfig.load(args.config)
    members = pq.read_table(args.data_dir / "members.parquet", columns=["member_id"])["member_id"]
    member_ids = members.to_numpy(zero_copy_only=False).astype(str)
    kinds = args.kinds.split(",")
    faiss.omp_set_num_threads(1)  # one BLAS/OpenMP thread, as in a serving worker (`service.server`)
    with threadpool_limits(1):
        result = uvloop.run(measure(config, member_ids, kinds, args.calls, args.rounds, args.profile))
    print(f"\n{'call':<18} {'CPU us/call':>12} {'best round':>11} {'wall us/call':>13} {'degraded':>9}   "
          f"(medians of {args.rounds} rounds; best: the least disturbed round)")
    for kind in kinds:
        cpu = result["cpu_us"][kind]  # type: ignore[index]
        print(f"{kind:<18} {statistics.median(cpu):>12.0f} {min(cpu):>11.0f} "
              f"{statistics.median(result['wall_us'][kind]):>13.0f} {result['degraded'][kind]:>9}")  # type: ignore[index]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"recommend_cost-{args.label}.json"
    out.write_text(json.dumps({"label": args.label, "calls": args.calls, "rounds": args.rounds,
                               "members": len(member_ids), "load_average": os.getloadavg(), **result}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
