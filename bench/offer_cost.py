"""CPU per offer call in one process, without a server or a load generator: where an offer decision's time goes.

    .venv/bin/python bench/offer_cost.py --config var/bench/omnirec.toml --data-dir var/bench/data [--profile]

Builds a worker's parts as `omnirec serve` does (`service.wiring`: the published bundle, the config's
Redis, the offers engine) and calls the OfferService servicer methods one after another on uvloop for random members:
NextBestOffer (app, k=3), NextBestOffer with `shown=true` and DecideCoupon (a fresh request id per call).
What it measures is this process's CPU time per call (`time.process_time`: the protos, the engine, the
redis-py pipeline, the decision log), which barely depends on how loaded the shared machine is, and the
wall time per call (the Redis round trips included, so that one does). gRPC's own cost and the
interceptors are not in it (`bench/offer_load.py` measures the whole server). `--profile` prints the
functions that take the most CPU time (cProfile on `process_time`, cumulative and own) for each kind of call.
Writes bench/results/offer_cost-<label>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import time
import uuid
from collections import Counter
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import uvloop
from profiling import print_profiles
from threadpoolctl import threadpool_limits

from omnirec.config import OmnirecConfig
from omnirec.domain.errors import OmnirecError
from omnirec.service import offer_servicer, wiring
from omnirec.service.bundles import holder_for
from omnirec.v1 import common_pb2, offers_pb2

RESULTS = Path(__file__).parent / "results"
KINDS = ("next_best_offer", "next_best_offer_shown", "decide_coupon")


class _Context:
    """The one thing the servicer asks of a grpc.aio context: the caller's deadline (none here)."""

    @staticmethod
    def time_remaining() -> None:
        return None


def _request(kind: str, member: str) -> object:
    if kind == "decide_coupon":
        return offers_pb2.DecideCouponRequest(request_id=uuid.uuid4().hex, member_id=member,
                                              channel=common_pb2.CHANNEL_APP)
    return offers_pb2.NextBestOfferRequest(member_id=member, channel=common_pb2.CHANNEL_APP, k=3,
                                           shown=kind == "next_best_offer_shown")


async def _run(servicer: offer_servicer.OfferServicer, kind: str, members: np.ndarray, calls: int,
               seed: int, profile: cProfile.Profile | None, errors: Counter[str]) -> tuple[float, float]:
    """(CPU us per call, wall us per call) for `calls` sequential calls."""
    method = servicer.DecideCoupon if kind == "decide_coupon" else servicer.NextBestOffer
    rng = np.random.default_rng(seed)
    picks = [str(m) for m in members[rng.integers(len(members), size=calls)]]
    context = _Context()
    if profile is not None:
        profile.enable()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for member in picks:
        try:
            await method(_request(kind, member), context)
        except OmnirecError as exc:  # e.g. a decision over its time budget on an overloaded machine
            errors[type(exc).__name__] += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if profile is not None:
        profile.disable()
    return cpu * 1e6 / calls, wall * 1e6 / calls


async def measure(config: OmnirecConfig, members: np.ndarray, calls: int, rounds: int,
                  profile: bool) -> dict[str, object]:
    models = holder_for(config.train.bundle_root, config.data_dir, config.recommendations)
    parts = wiring.build(config, models)
    await models.reload()
    servicer = offer_servicer.OfferServicer(parts.offers, config.service.default_deadline_s)
    try:
        for kind in KINDS:  # warm-up: connections, scripts, the offer targets' items
            await _run(servicer, kind, members, 200, 0, None, Counter())
        cpu: dict[str, list[float]] = {k: [] for k in KINDS}
        wall: dict[str, list[float]] = {k: [] for k in KINDS}
        errors: Counter[str] = Counter()
        profiles = {k: cProfile.Profile(time.process_time) for k in KINDS} if profile else {}
        for r in range(rounds):
            for kind in KINDS:
                c, w = await _run(servicer, kind, members, calls, r + 1, profiles.get(kind), errors)
                cpu[kind].append(c)
                wall[kind].append(w)
                print(f"  round {r + 1} {kind:<22} {c:>8.0f} us CPU {w:>8.0f} us wall per call", flush=True)
        print_profiles(profiles, 30)
        return {"cpu_us": cpu, "wall_us": wall, "errors": dict(errors)}
    finally:
        await parts.features.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="omnirec config (bundle root, redis)")
    parser.add_argument("--data-dir", type=Path, required=True, help="simulated data: member ids to ask for")
    parser.add_argument("--label", default="run", help="names the results file (e.g. before, after)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print cProfile tables per kind of call")
    args = parser.parse_args()

    config = OmnirecConfig.load(args.config)
    members = pq.read_table(args.data_dir / "members.parquet", columns=["member_id"])["member_id"]
    member_ids = members.to_numpy(zero_copy_only=False).astype(str)
    faiss.omp_set_num_threads(1)  # one BLAS/OpenMP thread, as in a serving worker (`service.server`)
    with threadpool_limits(1):
        result = uvloop.run(measure(config, member_ids, args.calls, args.rounds, args.profile))
    print(f"\n{'call':<22} {'CPU us/call':>12} {'wall us/call':>13}   (medians of {args.rounds} rounds)")
    for kind in KINDS:
        print(f"{kind:<22} {statistics.median(result['cpu_us'][kind]):>12.0f} "  # type: ignore[index]
              f"{statistics.median(result['wall_us'][kind]):>13.0f}")  # type: ignore[index]
    if result["errors"]:
        print(f"errors: {result['errors']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"offer_cost-{args.label}.json"
    out.write_text(json.dumps({"label": args.label, "calls": args.calls, "rounds": args.rounds,
                               "members": len(member_ids), "load_average": os.getloadavg(), **result}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
