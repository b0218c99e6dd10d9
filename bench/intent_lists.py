"""Give a published bundle intent lists of the two-stage ranker's shape, for the serving benchmark only.

    .venv/bin/python bench/intent_lists.py --config var/bench/omnirec.toml --data-dir var/bench/data

Serving cost does not depend on how good the lists are, only on their shape (members x `--length` int32
items, float32 scores, per-item cycles, `lists_as_of`), so when `omnirec train` wrote none (the ranker
did not run at this size) this writes plausible ones from the same data: BUY_AGAIN = the member's bought
items, most recently bought first; MIXED = the bundle's precomputed top row; DISCOVER = that row without
bought items; item cycles = each item's median gap between two purchases by the same member (NaN when
nobody bought it twice). The new bundle is the published one plus these arrays (the other files are
symlinked, not copied) and is published as the next version; `--no-publish` only writes it.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from omnirec.bundle import BundleRegistry, ModelBundle
from omnirec.bundle.format import INTENT_ARRAYS, MANIFEST, Array, Manifest
from omnirec.config import OmnirecConfig
from omnirec.domain.clock import DAY
from omnirec.domain.derive import codes
from omnirec.domain.vocab import Col, EventType, Intent
from omnirec.feature_store.materialize import newest_distinct


def purchases(data_dir: Path, bundle: ModelBundle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(member row, item index, ts) of every purchase of a member and item the bundle knows."""
    events = pq.read_table(data_dir / "events.parquet", columns=[Col.MEMBER_ID, Col.ITEM_ID, Col.EVENT_TYPE, Col.TS])
    events = events.filter(pc.equal(events[Col.EVENT_TYPE], EventType.PURCHASE.value))
    member = codes(events[Col.MEMBER_ID], pa.array(bundle.members.external_ids.tolist(), pa.string()))
    item = codes(events[Col.ITEM_ID], pa.array(bundle.items.external_ids.tolist(), pa.string()))
    ts = events[Col.TS].to_numpy().astype(np.int64)
    keep = (member >= 0) & (item >= 0)
    return member[keep], item[keep], ts[keep]


def cycle_days(member: np.ndarray, item: np.ndarray, ts: np.ndarray, n_items: int) -> np.ndarray:
    """Each item's median gap in days between consecutive purchases of it by one member (NaN: none)."""
    order = np.lexsort((ts, item, member))
    m, i, t = member[order], item[order], ts[order]
    same = (m[1:] == m[:-1]) & (i[1:] == i[:-1]) & (t[1:] > t[:-1])
    gap_item, gap = i[1:][same], (t[1:] - t[:-1])[same] / DAY
    out = np.full(n_items, np.nan, np.float32)
    if not len(gap):
        return out
    order = np.lexsort((gap, gap_item))
    gap_item, gap = gap_item[order], gap[order]
    starts = np.flatnonzero(np.r_[True, gap_item[1:] != gap_item[:-1]])
    ends = np.r_[starts[1:], len(gap_item)]
    out[gap_item[starts]] = gap[(starts + ends - 1) // 2]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--length", type=int, default=50, help="items per member and intent")
    parser.add_argument("--no-publish", action="store_true")
    args = parser.parse_args()
    started = time.time()
    config = OmnirecConfig.load(args.config)
    registry = BundleRegistry(config.train.bundle_root)
    source = registry.current_path()
    if source is None:
        raise SystemExit(f"no published bundle under {config.train.bundle_root}: run `omnirec train` first")
    bundle = ModelBundle.load(source)
    n_members, n_items, length = len(bundle.members), len(bundle.items), args.length
    member, item, ts = purchases(args.data_dir, bundle)
    as_of = int(ts.max())
    bought = newest_distinct(member, item, ts, length)
    top = bundle.arrays.get(Array.MEMBER_TOP_ITEMS)
    if top is None:
        raise SystemExit("the bundle has no precomputed top lists (train.member_top_k = 0)")

    lists = {intent: np.full((n_members, length), -1, np.int32) for intent in Intent}
    starts = np.searchsorted(bought.owner, np.arange(n_members + 1))
    step = 50_000
    bar = tqdm(total=n_members, desc="intent lists", unit="member")
    for lo in range(0, n_members, step):
        hi = min(lo + step, n_members)
        bar.update(hi - lo)
        rows = np.asarray(top[lo:hi, :length])
        lists[Intent.MIXED][lo:hi, :rows.shape[1]] = rows
        for r in range(lo, hi):
            mine = bought.item[starts[r]:starts[r + 1]]
            lists[Intent.BUY_AGAIN][r, :len(mine)] = mine
            new = rows[r - lo][(rows[r - lo] >= 0) & ~np.isin(rows[r - lo], mine)]
            lists[Intent.DISCOVER][r, :len(new)] = new
    bar.close()
    dest = registry.path(registry.next_version())
    dest.mkdir(parents=True)
    for path in source.iterdir():
        if path.name != MANIFEST:
            (dest / path.name).symlink_to(path.resolve())
    scores = np.tile(np.linspace(1.0, 0.0, length, dtype=np.float32), (n_members, 1))
    for intent, (items_name, scores_name) in INTENT_ARRAYS.items():
        np.save(dest / f"{items_name}.npy", lists[intent])
        np.save(dest / f"{scores_name}.npy", scores)
    np.save(dest / f"{Array.ITEM_CYCLE_DAYS}.npy", cycle_days(member, item, ts, n_items))
    manifest = Manifest.model_validate(bundle.manifest.model_dump() | {
        "version": int(dest.name.removeprefix("v")),
        "lists_as_of": datetime.fromtimestamp(as_of, UTC).isoformat()})
    manifest.write(dest)
    if not args.no_publish:
        registry.publish(manifest.version)
    print(f"wrote {dest} ({n_members:,} members x {length} per intent, lists as of "
          f"{manifest.lists_as_of}) in {time.time() - started:.0f} s{'' if args.no_publish else '; published'}")


if __name__ == "__main__":
    main()
