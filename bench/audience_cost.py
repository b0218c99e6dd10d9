"""CPU per member of an audience's filters and suppression, in process, for one or more copies of omnirec.

    .venv/bin/python bench/audience_cost.py --data-dir DIR --members 100000 --src before=/tmp/old --src after=.

What it measures: `AudienceBuilder.build` over the first `--members` members of a simulated retailer
(random d=32 factors: the ranking's cost depends on the shapes), reading the feature store and the contact
ledger of a Redis database, as the audience process does; CPU seconds of the building process
(`time.process_time`) per member examined, for the suppression stage and in all. A machine shared with
other jobs makes wall time noise; CPU time of one process is what the code costs. Each `--src` copy runs
in its own child process (`PYTHONPATH`), copy after copy, `--rounds` times in alternation (A B A B), and
its rows are digested so that copies that must agree can be seen to agree.

Set-up (idempotent): the retailer's features materialised into `--redis-url` under `--namespace` unless a
generation is there; a contact ledger and wallets for the measured members: confirmed sends of
`winback-15off60` (app) to a third of them and of `beauty-20pct` (app, then web) to a fifth, and coupons of
`beauty-20pct` in a tenth of the wallets, half of them redeemed. Requests: a category on app with holdout
10% (what bench/audience.py streams) and the offers `beauty-20pct` and `winback-15off60` on app.
Writes bench/results/audience_cost.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "audience_cost.json"
REQUESTS = ("category", "beauty-20pct", "winback-15off60")


def setup(data_dir: Path, redis_url: str, namespace: str, members: int) -> None:
    import pyarrow.parquet as pq

    from omnirec.domain.lifecycle import DAY, LifecycleRules
    from omnirec.domain.tiers import TierLadder
    from omnirec.domain.vocab import Channel
    from omnirec.feature_store.config import RedisConfig
    from omnirec.feature_store.connection import connect, connect_async
    from omnirec.feature_store.keys import Keys
    from omnirec.feature_store.materialize import materialize
    from omnirec.offers.store import Coupon, OfferStore

    config = RedisConfig(url=redis_url, namespace=namespace)
    client = connect(config, socket_timeout_s=60)
    if client.hget(Keys(namespace).pointer(), "generation") is None:
        print("materialising ...", flush=True)
        materialize(data_dir, config, TierLadder(), LifecycleRules(), now=time.time(), progress=True)
    ids = pq.read_table(data_dir / "members.parquet", columns=["member_id"])["member_id"].to_pylist()[:members]
    store = OfferStore(connect_async(config), config, sync_client=client)
    now = time.time()
    for send, offer, channel, to in (("winback", "winback-15off60", Channel.APP, ids[0::3]),
                                     ("beauty-app", "beauty-20pct", Channel.APP, ids[0::5]),
                                     ("beauty-web", "beauty-20pct", Channel.WEB, ids[0::5])):
        store.confirm_send(f"bench-cost-{send}-{members}", offer, channel, to, None, now)  # again: a no-op
    keys = Keys(namespace)
    pipe = client.pipeline(transaction=False)
    for i, m in enumerate(ids[0::10]):
        coupon = Coupon(f"bench-cost-{i}", m, "beauty-20pct", f"bench-cost-d{i}", now - 5 * DAY, now + 25 * DAY,
                        12.0, now - DAY if i % 2 else None, f"bench-cost-r{i}" if i % 2 else None)
        pipe.hset(keys.wallet(m), coupon.coupon_id, coupon.to_json())
    pipe.execute()


def child(args: argparse.Namespace) -> None:
    """One copy's measurements, printed as one JSON line (runs under that copy's PYTHONPATH)."""
    import pyarrow.parquet as pq

    from omnirec.audience import AudienceBuilder, AudienceRequest, AudienceSources, FactorModel
    from omnirec.audience.scoring import affinity_scores, ranked
    from omnirec.domain.idmap import IdMap
    from omnirec.domain.lifecycle import LifecycleRules
    from omnirec.domain.tiers import TierLadder
    from omnirec.domain.vocab import Channel
    from omnirec.feature_store.config import RedisConfig
    from omnirec.feature_store.connection import connect, connect_async
    from omnirec.feature_store.reader import FeatureReader
    from omnirec.offers.catalogue import Target, load_catalogue
    from omnirec.offers.config import EXAMPLE_CATALOGUE, OfferConfig
    from omnirec.offers.engine import selection
    from omnirec.offers.store import OfferStore

    config = RedisConfig(url=args.redis_url, namespace=args.namespace)
    client = connect(config, socket_timeout_s=60)
    ids = pq.read_table(args.data_dir / "members.parquet", columns=["member_id"])["member_id"]
    ids = ids.to_numpy(zero_copy_only=False)[:args.members]
    items = pq.read_table(args.data_dir / "items.parquet", columns=["item_id", "category"])
    rng = np.random.default_rng(0)
    model = FactorModel("bench", IdMap.from_ids(ids), rng.standard_normal((len(ids), 32), np.float32),
                        IdMap.from_ids(items["item_id"].to_numpy(zero_copy_only=False)),
                        rng.standard_normal((len(items), 32), np.float32))
    store = OfferStore(connect_async(config), config, sync_client=client)
    reader = FeatureReader(client, config)
    extra = {}
    if hasattr(reader, "profile_columns"):  # a copy with the column-wise reads
        from omnirec.audience.ledger import ledger_reader
        extra = {"profile_columns": reader.profile_columns, "ledger": ledger_reader(store)}
    sources = AudienceSources(model, None, load_catalogue(EXAMPLE_CATALOGUE),
                              lambda t: reader.selection_items([selection(t)])[1][0], reader.profiles,
                              store.marketing_states, **extra)
    builder = AudienceBuilder(TierLadder(), LifecycleRules(), OfferConfig().fatigue)
    categories = items["category"].to_pylist()
    top = max(set(categories), key=categories.count)
    out = {}
    for kind in args.requests.split(","):
        request = (AudienceRequest(Channel.APP, len(ids), target=Target(scope="categories", ids=(top,)),
                                   holdout_share=0.1, send_id="bench") if kind == "category"
                   else AudienceRequest(Channel.APP, len(ids), offer_id=kind))
        cpu = time.process_time()
        model, targets = builder.targets(request, builder.offer(request, sources.catalogue, args.now), sources)
        if targets is not None:
            ranked(affinity_scores(model.member_factors, targets))
        scoring = time.process_time() - cpu
        cpu = time.process_time()
        audience = builder.build(request, sources, args.now)
        cpu = time.process_time() - cpu
        rows = audience.rows
        digest = hashlib.blake2b(json.dumps(
            [rows.member_ids.tolist(), rows.scores.tolist(), rows.tiers.tolist(), rows.stages.tolist(),
             rows.holdout.tolist(), sorted((str(k), v) for k, v in audience.suppressed.items()), audience.examined]
        ).encode(), digest_size=8).hexdigest()
        out[kind] = {"cpu_s": cpu, "suppression_cpu_s": cpu - scoring, "wall_s": sum(audience.timings.values()),
                     **audience.timings, "rows": len(rows), "examined": audience.examined, "digest": digest}
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="a simulated retailer (omnirec simulate)")
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/4")
    parser.add_argument("--namespace", default="bench-audience")
    parser.add_argument("--src", action="append", default=[], metavar="NAME=DIR",
                        help="a copy of the repository to measure (repeatable; default: this one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", default=",".join(REQUESTS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--now", type=float, default=time.time(), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    setup(args.data_dir, args.redis_url, args.namespace, args.members)
    sources = dict(s.split("=", 1) for s in args.src) or {"this": str(Path(__file__).resolve().parents[1])}
    runs: list[dict[str, object]] = []
    for r in range(args.rounds):
        names = list(sources) if r % 2 == 0 else list(reversed(sources))
        for name in names:
            env = {**os.environ, "PYTHONPATH": str(Path(sources[name]).resolve())}
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, "-P", __file__, "--child", "--data-dir", str(args.data_dir),
                                  "--members", str(args.members), "--redis-url", args.redis_url,
                                  "--namespace", args.namespace, "--requests", args.requests,
                                  "--now", repr(args.now)],
                                 env=env, check=True, capture_output=True, text=True).stdout
            for kind, m in json.loads(out.strip().splitlines()[-1]).items():
                runs.append({"round": r, "src": name, "request": kind, "load_avg": round(load, 1), **m})
                print(f"round {r} {name:>8} {kind:>16}: {m['suppression_cpu_s'] / m['examined'] * 1e6:6.1f} us "
                      f"suppression CPU/member, {m['cpu_s'] / m['examined'] * 1e6:6.1f} in all "
                      f"({m['examined']:,} examined, {m['rows']:,} rows, suppression {m['suppression']:.2f} s wall, "
                      f"load {load:.1f}) digest {m['digest']}", flush=True)
    print("\n| request | copy | suppression CPU us per member (each round) | in all | wall s | digest |\n"
          "|---|---|---:|---:|---:|---|")
    for kind in args.requests.split(","):
        for name in sources:
            mine = [x for x in runs if x["request"] == kind and x["src"] == name]
            per = ", ".join(f"{x['suppression_cpu_s'] / x['examined'] * 1e6:.1f}" for x in mine)  # type: ignore[operator]
            whole = ", ".join(f"{x['cpu_s'] / x['examined'] * 1e6:.1f}" for x in mine)  # type: ignore[operator]
            wall = ", ".join(f"{x['wall_s']:.1f}" for x in mine)
            print(f"| {kind} | {name} | {per} | {whole} | {wall} | "
                  f"{', '.join(sorted({str(x['digest']) for x in mine}))} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"members": args.members, "now": args.now,
                                   "machine": f"{platform.machine()}, {os.cpu_count()} cores", "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
