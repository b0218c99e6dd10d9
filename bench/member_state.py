"""Serving replica memory with member state held by the replica vs in the feature store.

    .venv/bin/python bench/member_state.py --members 1000000 --items 100000

Set-up: a bundle written with `bundle.format.write_bundle` from random arrays of the shapes training writes
(`--dim` factors, `--top-k` precomputed items per member and `--intents` per-intent lists of the same depth,
flat FAISS indexes over the items): memory depends on the shapes, not the values, and a 1M-member training
run does not fit beside the benchmark. Each measurement is a fresh process (spawned, alternating the two
modes `--repeats` times) that loads the bundle as `omnirec serve` does (`service.bundles.load_serving_model`)
and then reads every page of every mapped array, as a replica does once its traffic has reached every
member: VmRSS, RssAnon (id maps, dictionaries) and RssFile (mapped bundle pages, shared by a machine's
workers) are read from /proc after imports, after the load and after the touch. The feature store's side
is measured by writing `--redis-members` members' lists (`Materializer.write_member_lists`) into their own
Redis database (default `redis://127.0.0.1:6379/7`, namespace `bench-member-state`, removed afterwards) and
reading `used_memory` before and after. Prints a table and writes bench/results/member_state.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "member_state.json"


def _rss() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) * 1024
    return out


def _replica(path: Path, in_store: bool, answer: mp.Queue) -> None:
    from omnirec.service.bundles import load_serving_model
    from omnirec.service.config import ServiceConfig

    imported = _rss()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as data_dir:
        model = load_serving_model(path, Path(data_dir),
                                   service=ServiceConfig(member_state_in_store_above=0 if in_store else None))
    load_s = time.perf_counter() - started
    loaded = _rss()
    bundle = model.bundle
    for array in bundle.arrays.values():  # every page, as a replica whose traffic reached every member
        np.asarray(array).view(np.uint8).reshape(-1)[::4096].sum()
    for index in bundle.indexes.values():  # a flat index's search reads all its vectors
        index.search(np.zeros((1, index.d), np.float32), 1)
    touched = _rss()
    if not in_store:
        probe = bundle.members.external_ids[len(bundle.members) // 2]
        if bundle.member_top(str(probe), 10) is None:
            raise RuntimeError("the held bundle does not know its own member")
    answer.put({"mode": "store" if in_store else "replica", "load_s": load_s, "imported": imported,
                "loaded": loaded, "touched": touched, "arrays": len(bundle.arrays),
                "members_loaded": len(bundle.members)})


def build_bundle(dest: Path, members: int, items: int, dim: int, top_k: int, intents: int) -> Path:
    import faiss
    import scipy.sparse as sp

    from omnirec.bundle.format import INTENT_ARRAYS, Array, BundleArtifacts, Index, Manifest, Sparse, write_bundle
    from omnirec.domain.idmap import IdMap

    rng = np.random.default_rng(0)
    item_factors = rng.standard_normal((items, dim), dtype=np.float32)
    unit = item_factors / np.linalg.norm(item_factors, axis=1, keepdims=True)
    flat_ip = faiss.IndexFlatIP(dim)
    flat_ip.add(item_factors)
    flat_cos = faiss.IndexFlatIP(dim)
    flat_cos.add(unit)
    top_items = rng.integers(0, items, (members, top_k), dtype=np.int32)
    top_scores = np.sort(rng.random((members, top_k), dtype=np.float32), axis=1)[:, ::-1]
    arrays = {Array.MEMBER_FACTORS: rng.standard_normal((members, dim), dtype=np.float32),
              Array.ITEM_FACTORS: item_factors, Array.ITEM_CONTENT: item_factors,
              Array.ITEM_CONTENT_BIAS: np.zeros(items, np.float32), Array.ITEM_CONTENT_UNIT: unit,
              Array.PROFILE_NAMES: np.array(["tier=basic", "tier=gold"]),
              Array.PROFILE_EMBEDDINGS: rng.standard_normal((2, dim), dtype=np.float32),
              Array.POPULARITY: rng.random(items, dtype=np.float32),
              Array.POPULARITY_CHANNEL_NAMES: np.array(["app"]), Array.POPULARITY_STORE_IDS: np.array(["s1"]),
              Array.MEMBER_TOP_ITEMS: top_items, Array.MEMBER_TOP_SCORES: top_scores}
    for item_name, score_name in list(INTENT_ARRAYS.values())[:intents]:
        arrays[item_name], arrays[score_name] = top_items, top_scores
    popular = sp.csr_matrix(rng.random((1, items), dtype=np.float32))
    partners = 20  # `complements_per_item`
    complements = sp.csr_matrix((rng.random(items * partners, dtype=np.float32),
                                 (np.repeat(np.arange(items), partners), rng.integers(0, items, items * partners))),
                                shape=(items, items))
    artifacts = BundleArtifacts(
        manifest=Manifest(version=1, beats_popularity=True, complement_blend=0.5),
        items=IdMap.from_ids([f"i{i:07d}" for i in range(items)]),
        members=IdMap.from_ids([f"m{i:09d}" for i in range(members)]), arrays=arrays,
        sparse={Sparse.POPULARITY_CHANNELS: popular, Sparse.POPULARITY_STORES: popular,
                Sparse.COMPLEMENTS: complements},
        indexes={Index.ITEM: flat_cos, Index.MEMBER: flat_ip})
    return write_bundle(artifacts, dest)


def redis_bytes_per_member(path: Path, url: str, members: int) -> dict[str, float]:
    """Redis `used_memory` growth per member for `member_top` values of the bundle's first `members` members."""
    import redis

    from omnirec.bundle import ModelBundle
    from omnirec.feature_store import resp
    from omnirec.feature_store.config import RedisConfig
    from omnirec.feature_store.materialize import Materializer, MemberListSource

    config = RedisConfig(url=url, namespace="bench-member-state")
    client = redis.Redis.from_url(url)
    bundle = ModelBundle.load(path)
    full = MemberListSource.from_bundle(bundle, 50)
    source = MemberListSource(full.bundle_version, full.member_ids.slice(0, members), full.columns)
    before = int(client.info("memory")["used_memory"])
    materializer = Materializer(client, config)
    try:
        with resp.BulkSender(client) as sender:
            materializer.write_member_lists(source, 1, sender)
        after = int(client.info("memory")["used_memory"])
        sample = materializer.keys.at(1).member_top(str(source.member_ids[0]))
        value = len(client.get(sample) or b"")
        usage = int(client.memory_usage(sample) or 0)
    finally:
        for key in client.scan_iter(match="bench-member-state@*", count=10_000):
            client.delete(key)
        client.close()
    return {"members": members, "used_memory_per_member": (after - before) / members, "value_bytes": value,
            "memory_usage_one_key": usage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--intents", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--redis-members", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None, help="where the bundle is written (default: a temp dir)")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        started = time.perf_counter()
        path = build_bundle(Path(tmp) / "v1", args.members, args.items, args.dim, args.top_k, args.intents)
        print(f"bundle of {args.members:,} members written in {time.perf_counter() - started:.1f} s")
        ctx = mp.get_context("spawn")
        runs = []
        for _ in range(args.repeats):
            for in_store in (False, True):
                answer: mp.Queue = ctx.Queue()
                proc = ctx.Process(target=_replica, args=(path, in_store, answer))
                proc.start()
                runs.append(answer.get())
                proc.join()
        store = redis_bytes_per_member(path, args.redis_url, min(args.redis_members, args.members))
    load_after = os.getloadavg()

    def best(mode: str, stage: str, what: str) -> int:
        return min(r[stage][what] for r in runs if r["mode"] == mode)

    mib = 2**20
    print(f"\nreplica memory, {args.members:,} members x {args.items:,} items, d={args.dim}, top-{args.top_k} + "
          f"{args.intents} intent lists; load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"{'member state':<14}{'after load':>14}{'after touch':>14}{'anon':>10}{'file':>10}")
    for mode in ("replica", "store"):
        print(f"{mode:<14}{best(mode, 'loaded', 'VmRSS') / mib:>11.0f} MiB"
              f"{best(mode, 'touched', 'VmRSS') / mib:>10.0f} MiB{best(mode, 'touched', 'RssAnon') / mib:>7.0f} MiB"
              f"{best(mode, 'touched', 'RssFile') / mib:>7.0f} MiB")
    per_member = (best("replica", "touched", "VmRSS") - best("store", "touched", "VmRSS")) / args.members
    print(f"member state on a replica: {per_member:,.0f} B per member; in Redis: "
          f"{store['used_memory_per_member']:,.0f} B per member ({store['value_bytes']:,} B value)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "redis": store,
        "replica_bytes_per_member": per_member, "load_average": [load_before, load_after],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
