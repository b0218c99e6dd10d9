"""The bundle format: file and array names, the manifest, and the writer training calls.

One bundle is one folder; every array is `.npy`/`.npz` without pickles and every index a
`faiss.write_index` file, so serving memory-maps them. Names live here only: training writes through
`write_bundle` and serving reads through `bundle.reader.ModelBundle`, neither spells a file name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict

from omnirec.domain.idmap import IdMap
from omnirec.domain.vocab import Intent

MANIFEST = "manifest.json"
MEMBERS = "members.npy"
ITEMS = "items.npy"
"""`IdMap`s: row i of every member / item array belongs to that id."""


class Array(StrEnum):
    """Dense arrays, saved as `<name>.npy`."""

    MEMBER_FACTORS = "member_factors"
    """Collaborative (ALS or BPR) member factors; score = inner product with `ITEM_FACTORS`."""
    ITEM_FACTORS = "item_factors"
    ITEM_CONTENT = "item_content"
    """LightFM item representations (identity + metadata): they cover cold items."""
    ITEM_CONTENT_BIAS = "item_content_bias"
    ITEM_CONTENT_UNIT = "item_content_unit"
    """LightFM [metadata part, identity part (0 for cold items)] as unit rows: the item index's vectors."""
    PROFILE_NAMES = "profile_names"
    """LightFM member-feature names, sorted (`tier=gold`, ...; `domain.profile.feature_name`)."""
    PROFILE_EMBEDDINGS = "profile_embeddings"
    POPULARITY = "popularity"
    POPULARITY_CHANNEL_NAMES = "popularity_channel_names"
    """Row names of `Sparse.POPULARITY_CHANNELS`, sorted."""
    POPULARITY_STORE_IDS = "popularity_store_ids"
    """Row names of `Sparse.POPULARITY_STORES`, sorted."""
    MEMBER_TOP_ITEMS = "member_top_items"
    """Optional: each member's `member_top_k` best items from `Index.MEMBER` (-1 where fewer exist)."""
    MEMBER_TOP_SCORES = "member_top_scores"
    MIXED_ITEMS = "intent_mixed_items"
    """Optional: each member's next-basket list for `Intent.MIXED` from the two-stage ranker, best first
    (int32 item indexes, -1 where fewer), as of `Manifest.lists_as_of`."""
    MIXED_SCORES = "intent_mixed_scores"
    BUY_AGAIN_ITEMS = "intent_buy_again_items"
    """Optional: as `MIXED_ITEMS`, for `Intent.BUY_AGAIN` (items the member bought, most due first)."""
    BUY_AGAIN_SCORES = "intent_buy_again_scores"
    DISCOVER_ITEMS = "intent_discover_items"
    """Optional: as `MIXED_ITEMS`, for `Intent.DISCOVER` (items the member never bought)."""
    DISCOVER_SCORES = "intent_discover_scores"
    ITEM_CYCLE_DAYS = "item_cycle_days"
    """Optional: each item's median repurchase gap in days (float32, NaN where nobody bought it twice)."""


INTENT_ARRAYS = {
    Intent.MIXED: (Array.MIXED_ITEMS, Array.MIXED_SCORES),
    Intent.BUY_AGAIN: (Array.BUY_AGAIN_ITEMS, Array.BUY_AGAIN_SCORES),
    Intent.DISCOVER: (Array.DISCOVER_ITEMS, Array.DISCOVER_SCORES),
}
"""The (items, scores) arrays of each intent's precomputed lists."""

OPTIONAL_ARRAYS = frozenset({Array.MEMBER_TOP_ITEMS, Array.MEMBER_TOP_SCORES, Array.ITEM_CYCLE_DAYS,
                             *(name for pair in INTENT_ARRAYS.values() for name in pair)})
MEMBER_ARRAYS = frozenset({Array.MEMBER_FACTORS, Array.MEMBER_TOP_ITEMS, Array.MEMBER_TOP_SCORES,
                           *(name for pair in INTENT_ARRAYS.values() for name in pair)})
"""The arrays (besides `MEMBERS`) that grow with members: a replica whose member state is in the feature store
does not map them."""


class Sparse(StrEnum):
    """Sparse CSR matrices, saved as `<name>.npz`."""

    POPULARITY_CHANNELS = "popularity_channels"
    """Channel x item popularity."""
    POPULARITY_STORES = "popularity_stores"
    """Store x item popularity."""
    COMPLEMENTS = "complements"
    """Item x item purchase lift (top partners per item)."""


class Index(StrEnum):
    """FAISS indexes, saved under these file names."""

    ITEM = "item_item.faiss"
    """`Array.ITEM_CONTENT_UNIT` (cosine), for similar items."""
    MEMBER = "member_item.faiss"
    """`Array.ITEM_FACTORS` (inner product), queried with a member's factors."""


class Manifest(BaseModel):
    """What a bundle is: its version, provenance and evaluation, and the settings serving needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    beats_popularity: bool
    """The offline verdict `omnirec publish` checks before moving `current`."""
    complement_blend: float
    """Share of purchase lift (vs embedding similarity) in basket complements."""
    created_at: str = ""
    data_fingerprint: str = ""
    collaborative: str = ""
    params: dict[str, Any] = {}
    """The training config the bundle was built with."""
    params_digest: str = ""
    metrics: dict[str, dict[str, float]] = {}
    indexes: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    library_versions: dict[str, str] = {}
    publish_gate: str = "popularity"
    """Which rule decided `gate_passed`: `next_basket` or `popularity`."""
    gate_passed: bool | None = None
    """The next-basket gate's verdict (None for bundles written before it, or with the popularity gate)."""
    next_basket: dict[str, Any] = {}
    """The next-basket protocol's rows (served list and baselines, with 95% intervals) and the gate's checks."""
    lists_as_of: str = ""
    """ISO time of the last event the intent lists (`INTENT_ARRAYS`) saw: later purchases are the live
    feature store's to apply ("" when the bundle has no intent lists)."""

    @property
    def publishable(self) -> bool:
        """What `omnirec publish` checks: the gate's verdict, or `beats_popularity` where no gate ran."""
        return self.beats_popularity if self.gate_passed is None else self.gate_passed

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        return cls.model_validate_json((Path(folder) / MANIFEST).read_text())

    def write(self, folder: Path) -> None:
        (Path(folder) / MANIFEST).write_text(self.model_dump_json(indent=2))


@dataclass(frozen=True)
class BundleArtifacts:
    """Everything a bundle holds, in memory, as the pipeline produced it."""

    manifest: Manifest
    items: IdMap
    members: IdMap
    arrays: dict[Array, np.ndarray]
    sparse: dict[Sparse, sp.csr_matrix]
    indexes: dict[Index, faiss.Index] = field(default_factory=dict)


def write_bundle(artifacts: BundleArtifacts, dest: Path) -> Path:
    """Write into a hidden temporary folder beside `dest`, then rename: `dest` appears complete or not at all."""
    dest = Path(dest)
    missing = ((set(Array) - OPTIONAL_ARRAYS - set(artifacts.arrays)) | (set(Sparse) - set(artifacts.sparse))
               | (set(Index) - set(artifacts.indexes)))
    if missing:
        raise ValueError(f"incomplete bundle: {sorted(missing)} missing")
    tmp = dest.parent / f".{dest.name}.tmp"
    tmp.mkdir(parents=True)
    artifacts.items.save(tmp / ITEMS)
    artifacts.members.save(tmp / MEMBERS)
    for name, array in artifacts.arrays.items():
        np.save(tmp / f"{Array(name)}.npy", np.ascontiguousarray(array), allow_pickle=False)
    for name, matrix in artifacts.sparse.items():
        sp.save_npz(tmp / f"{Sparse(name)}.npz", sp.csr_matrix(matrix), compressed=False)
    for name, index in artifacts.indexes.items():
        faiss.write_index(index, str(tmp / Index(name)))
    artifacts.manifest.write(tmp)
    tmp.rename(dest)
    return dest
