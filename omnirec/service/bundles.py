"""Loading a published training bundle for serving: the bundle (memory-mapped) plus the item categories.

Bundles carry ids and vectors, not catalogue metadata, so the category of each item comes from the
catalogue (`items.parquet` in the data folder), aligned to the bundle's item order once per load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from omnirec.domain.readers import ITEMS_FILE
from omnirec.service.model import ModelHolder, ServingModel
from omnirec.service.ranking import CategoryIndex, MemberTop
from omnirec.training.bundle import ModelBundle
from omnirec.training.registry import BundleRegistry

log = logging.getLogger(__name__)


def item_categories(bundle: ModelBundle, data_dir: Path) -> np.ndarray:
    """Category path of every bundle item ("" where the catalogue lacks the item or the file is missing)."""
    categories = np.full(len(bundle.items), "", dtype=object)
    path = data_dir / ITEMS_FILE
    if not path.exists():
        log.warning("%s missing: the category filter will match nothing", path)
        return categories.astype(str)
    table = pq.read_table(path, columns=["item_id", "category"])
    idx = bundle.items.to_internal(table["item_id"].to_numpy(zero_copy_only=False).astype(str), strict=False)
    known = idx >= 0
    categories[idx[known]] = table["category"].to_numpy(zero_copy_only=False)[known]
    return categories.astype(str)


def member_top(bundle: ModelBundle) -> MemberTop:
    """Top-n items of a member: a row of the precomputed lists when they are deep enough, else a search of
    the bundle's member->item index (exact or HNSW, per the manifest); both give the same answer."""
    factors = bundle.arrays["member_factors"]
    top_items, top_scores = bundle.arrays.get("member_top_items"), bundle.arrays.get("member_top_scores")
    depth = 0 if top_items is None else top_items.shape[1]

    def top(member_id: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        row = bundle.members.get(member_id)
        if row is None:
            return None
        if n <= depth:
            found, scores = top_items[row, :n], top_scores[row, :n]  # type: ignore[index]
            keep = found >= 0
            return found[keep].astype(np.int64), np.asarray(scores[keep])
        query = np.ascontiguousarray(factors[row:row + 1], dtype=np.float32)
        scores, found = bundle.member_index.search(query, min(n, len(bundle.items)))
        keep = found[0] >= 0
        return found[0][keep].astype(np.int64), scores[0][keep]

    return top


def load_serving_model(path: Path, data_dir: Path) -> ServingModel:
    bundle = ModelBundle.load(path, mmap=True)
    return ServingModel(bundle, CategoryIndex.from_categories(item_categories(bundle, data_dir)),
                        str(bundle.version), path, member_top(bundle))


def holder_for(bundle_root: Path, data_dir: Path) -> ModelHolder:
    """A holder following the registry's `current` pointer under `bundle_root`."""
    registry = BundleRegistry(bundle_root)
    return ModelHolder(registry.current_path, lambda path: load_serving_model(path, data_dir))
