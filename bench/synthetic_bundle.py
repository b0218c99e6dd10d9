"""A published bundle of random arrays over a simulated retailer's members and items, for serving benchmarks.

What serving costs depends on the arrays' shapes, not their values, and training a 1M-member model does not
fit beside a benchmark on a shared machine; so the benchmarks that serve 1M members (`audience_isolation.py`,
`service_load.py --synthetic-bundle`) publish this instead: random d-dimensional factors, exact (flat) FAISS
indexes, precomputed top-50 lists drawn at random and, with `intent_lists`, the two-stage ranker's arrays
(`intent_{mixed,buy_again,discover}_{items,scores}`, `item_cycle_days`, `lists_as_of` = the last event's
time, so the feature store's purchases are all older than the lists, as right after a training run).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def write_bundle(data_dir: Path, root: Path, dim: int, intent_lists: int = 0) -> None:
    """Publish a bundle of random factors over the simulated members and items under `root`, unless one is
    published there already; `intent_lists` > 0 adds intent lists that long per member and intent."""
    import faiss
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    from omnirec.bundle import BundleRegistry
    from omnirec.bundle.format import INTENT_ARRAYS, Array, BundleArtifacts, Index, Manifest, Sparse, write_bundle
    from omnirec.domain.idmap import IdMap
    from omnirec.domain.vocab import Col

    registry = BundleRegistry(root)
    if registry.current_path() is not None:
        return
    members = IdMap.from_ids(pq.read_table(data_dir / "members.parquet", columns=["member_id"])["member_id"]
                             .to_numpy(zero_copy_only=False).astype(str))
    items = IdMap.from_ids(pq.read_table(data_dir / "items.parquet", columns=["item_id"])["item_id"]
                           .to_numpy(zero_copy_only=False).astype(str))
    rng = np.random.default_rng(0)
    n_m, n_i = len(members), len(items)
    item_factors = rng.standard_normal((n_i, dim), np.float32)
    content = rng.standard_normal((n_i, dim), np.float32)
    unit = content / np.linalg.norm(content, axis=1, keepdims=True)
    member_index, item_index = faiss.IndexFlatIP(dim), faiss.IndexFlatIP(dim)
    member_index.add(item_factors)
    item_index.add(unit)
    top_items = rng.integers(0, n_i, (n_m, 50), dtype=np.int32)
    top_scores = -np.sort(-rng.random((n_m, 50), np.float32), axis=1)
    arrays = {Array.MEMBER_FACTORS: rng.standard_normal((n_m, dim), np.float32), Array.ITEM_FACTORS: item_factors,
              Array.ITEM_CONTENT: content, Array.ITEM_CONTENT_BIAS: np.zeros(n_i, np.float32),
              Array.ITEM_CONTENT_UNIT: unit, Array.PROFILE_NAMES: np.array(["tier=gold"]),
              Array.PROFILE_EMBEDDINGS: rng.standard_normal((1, dim), np.float32),
              Array.POPULARITY: rng.random(n_i, np.float32), Array.POPULARITY_CHANNEL_NAMES: np.array([], str),
              Array.POPULARITY_STORE_IDS: np.array([], str), Array.MEMBER_TOP_ITEMS: top_items,
              Array.MEMBER_TOP_SCORES: top_scores}
    lists_as_of = ""
    if intent_lists:
        for items_name, scores_name in INTENT_ARRAYS.values():
            arrays[items_name] = rng.integers(0, n_i, (n_m, intent_lists), dtype=np.int32)
            arrays[scores_name] = -np.sort(-rng.random((n_m, intent_lists), np.float32), axis=1)
        arrays[Array.ITEM_CYCLE_DAYS] = rng.uniform(3.0, 60.0, n_i).astype(np.float32)
        last = pc.max(pq.read_table(data_dir / "events.parquet", columns=[Col.TS])[Col.TS]).as_py()  # unix s
        lists_as_of = datetime.fromtimestamp(int(last), UTC).isoformat()
    empty = sp.csr_matrix((0, n_i), dtype=np.float32)
    version = registry.next_version()
    write_bundle(BundleArtifacts(
        manifest=Manifest(version=version, beats_popularity=True, complement_blend=0.5, collaborative="random",
                          lists_as_of=lists_as_of),
        items=items, members=members, arrays=arrays,
        sparse={Sparse.POPULARITY_CHANNELS: empty, Sparse.POPULARITY_STORES: empty,
                Sparse.COMPLEMENTS: sp.csr_matrix((n_i, n_i), dtype=np.float32)},
        indexes={Index.ITEM: item_index, Index.MEMBER: member_index}), registry.path(version))
    registry.publish(version)
