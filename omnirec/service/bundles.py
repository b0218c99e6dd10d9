"""Loading a published bundle for serving: the bundle (memory-mapped) plus the item categories.

Bundles carry ids and vectors, not catalogue metadata, so the category of each item comes from the
catalogue (`items.parquet` in the data folder), aligned to the bundle's item order once per load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omnirec.audience.builder import FactorModel
from omnirec.bundle import Array, BundleRegistry, ModelBundle
from omnirec.bundle.reader import member_count
from omnirec.domain.readers import ITEMS_FILE
from omnirec.recommendations.config import RecommendationConfig
from omnirec.recommendations.ranking import CategoryIndex
from omnirec.service.config import ServiceConfig, member_state_in_store
from omnirec.service.model import ModelHolder, ServingModel

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


def never_items(bundle: ModelBundle, data_dir: Path, rules: RecommendationConfig) -> np.ndarray:
    """Mask of the bundle items listed in `never_items` or (with `never_zero_price`) priced 0 in the catalogue."""
    never = np.zeros(len(bundle.items), bool)
    idx = bundle.items.to_internal(list(rules.never_items), strict=False)
    never[idx[idx >= 0]] = True
    path = data_dir / ITEMS_FILE
    if rules.never_zero_price and path.exists():
        table = pq.read_table(path, columns=["item_id", "price"])
        free = table.filter(pc.equal(table["price"], 0.0))["item_id"].to_numpy(zero_copy_only=False).astype(str)
        idx = bundle.items.to_internal(free, strict=False)
        never[idx[idx >= 0]] = True
    return never


def load_serving_model(path: Path, data_dir: Path, rules: RecommendationConfig | None = None,
                       service: ServiceConfig | None = None) -> ServingModel:
    """Above `service.member_state_in_store_above` members the bundle is loaded without member state: the
    members' lists are read from the feature store (`omnirec materialize` put them there)."""
    rules = rules or RecommendationConfig()
    in_store = member_state_in_store(service or ServiceConfig(), member_count(path))
    bundle = ModelBundle.load(path, mmap=True, member_state=not in_store)
    if in_store:
        log.info("bundle v%d: %d members, member state read from the feature store", bundle.version,
                 bundle.member_count)
    categories = CategoryIndex.from_categories(item_categories(bundle, data_dir), never_items(bundle, data_dir, rules),
                                               rules.never_categories)
    return ServingModel(bundle, categories, str(bundle.version), path)


def holder_for(bundle_root: Path, data_dir: Path, rules: RecommendationConfig | None = None,
               service: ServiceConfig | None = None) -> ModelHolder:
    """A holder following the registry's `current` pointer under `bundle_root`."""
    registry = BundleRegistry(bundle_root)
    return ModelHolder(registry.current_path, lambda path: load_serving_model(path, data_dir, rules, service))


def factor_model(bundle: ModelBundle, version: str) -> FactorModel | None:
    """The bundle's collaborative factors as audiences score them (memory-mapped, not copied); None on a
    replica without member state (audiences of that size run on Spark: `omnirec audience --engine spark`)."""
    arrays = bundle.arrays
    if Array.MEMBER_FACTORS not in arrays:
        return None
    return FactorModel(version, bundle.members, arrays[Array.MEMBER_FACTORS], bundle.items, arrays[Array.ITEM_FACTORS],
                       arrays.get(Array.POPULARITY))
