"""A trained model bundle on disk, and the read-only API the gRPC service serves from.

Layout of one bundle folder (all arrays `.npy`/`.npz` without pickles, indexes via `faiss.write_index`):

| file | what |
|---|---|
| `manifest.json` | version, created_at, data fingerprint, params, metrics, index reports, library versions |
| `members.npy`, `items.npy` | `IdMap`s: row i of every member / item array belongs to that id |
| `member_factors.npy`, `item_factors.npy` | collaborative (ALS or BPR) factors; score = inner product |
| `item_content.npy`, `item_content_bias.npy` | LightFM item representations (identity + metadata): cover cold items |
| `item_content_unit.npy` | LightFM [metadata part, identity part (0 for cold items)] as unit rows: the item index |
| `profile_names.npy`, `profile_embeddings.npy` | LightFM member-feature embeddings, sorted by name (`tier=gold`, ...) |
| `popularity.npy` | overall popularity per item |
| `popularity_channels.npz`, `popularity_channel_names.npy` | channel x item popularity, rows in name order |
| `popularity_stores.npz`, `popularity_store_ids.npy` | store x item popularity, rows in store-id order |
| `complements.npz` | item x item purchase lift (top partners per item) |
| `item_item.faiss` | `item_content_unit` (cosine), for similar items |
| `member_item.faiss` | `item_factors` (inner product), queried with a member's factors |
| `member_top_items.npy`, `member_top_scores.npy` | each member's `member_top_k` best items from `member_item.faiss` |

Serving API (the service codes against exactly this)::

    bundle = ModelBundle.load(path)                      # arrays memory-mapped, indexes read with IO_FLAG_MMAP
    bundle.member_scores(member_id) -> np.ndarray | None  # collaborative scores over all items; None if unknown
    bundle.cold_start_scores({"tier": "gold", "lifecycle_stage": "active", "channel": "app", "region": "north"})
    bundle.similar_items(item_id, k) -> (item idx, scores)  # FAISS item index, the item itself excluded
    bundle.popularity(channel=None, store_id=None)        # per-item scores; store, else channel, else overall
    bundle.basket_complements(item_ids, k) -> (item idx, scores)  # lift blended with similarity, basket excluded

`bundle.member_index` is there for top-k retrieval without scoring every item (query it with
`bundle.arrays["member_factors"][row]`); `bundle.arrays["member_top_items"][row]` holds that search's
answer, precomputed. Returned indexes are internal item positions;
`bundle.items.to_external(idx)` turns them into item ids. Unknown items raise `domain.errors.NotFound`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp

from omnirec.domain.errors import NotFound
from omnirec.domain.idmap import IdMap
from omnirec.training.features import profile_names
from omnirec.training.models.base import top_k

MANIFEST = "manifest.json"
ITEM_INDEX = "item_item.faiss"
MEMBER_INDEX = "member_item.faiss"


@dataclass(frozen=True)
class BundleArtifacts:
    """Everything a bundle holds, in memory, as the pipeline produced it."""

    manifest: dict[str, object]
    items: IdMap
    members: IdMap
    arrays: dict[str, np.ndarray]
    """Dense arrays saved as `<name>.npy`."""
    sparse: dict[str, sp.csr_matrix]
    """Sparse matrices saved as `<name>.npz`."""
    indexes: dict[str, faiss.Index] = field(default_factory=dict)
    """FAISS indexes saved under their file name."""


def write_bundle(artifacts: BundleArtifacts, dest: Path) -> Path:
    """Write into a hidden temporary folder beside `dest`, then rename: `dest` appears complete or not at all."""
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp"
    tmp.mkdir(parents=True)
    artifacts.items.save(tmp / "items.npy")
    artifacts.members.save(tmp / "members.npy")
    for name, array in artifacts.arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
    for name, matrix in artifacts.sparse.items():
        sp.save_npz(tmp / f"{name}.npz", sp.csr_matrix(matrix), compressed=False)
    for name, index in artifacts.indexes.items():
        faiss.write_index(index, str(tmp / name))
    (tmp / MANIFEST).write_text(json.dumps(artifacts.manifest, indent=2, sort_keys=True, default=str))
    tmp.rename(dest)
    return dest


def _rank(scores: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.array(scores, dtype=np.float32, copy=True)
    scores[exclude] = -np.inf
    best = top_k(scores[None, :], min(k, len(scores) - len(exclude)))[0]
    return best, scores[best]


@dataclass(frozen=True)
class ModelBundle:
    """A loaded bundle: read-only, safe to share between threads."""

    path: Path
    version: int
    manifest: dict
    items: IdMap
    members: IdMap
    arrays: dict[str, np.ndarray] = field(repr=False)
    sparse: dict[str, sp.csr_matrix] = field(repr=False)
    item_index: faiss.Index = field(repr=False)
    member_index: faiss.Index = field(repr=False)

    @classmethod
    def load(cls, path: Path, mmap: bool = True) -> ModelBundle:
        """Open a bundle folder; with `mmap`, arrays and indexes are paged in on use, not copied."""
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise NotFound(f"no model bundle at {path} ({MANIFEST} missing)")
        manifest = json.loads((path / MANIFEST).read_text())
        mode = "r" if mmap else None
        # Plain ndarray views of the maps: same pages, without np.memmap's per-slice Python overhead.
        arrays = {p.stem: np.asarray(np.load(p, mmap_mode=mode, allow_pickle=False))
                  for p in sorted(path.glob("*.npy")) if p.stem not in ("items", "members")}
        sparse = {p.stem: sp.load_npz(p).tocsr() for p in sorted(path.glob("*.npz"))}
        flag = faiss.IO_FLAG_MMAP if mmap else 0
        return cls(path=path, version=int(manifest["version"]), manifest=manifest,
                   items=IdMap.load(path / "items.npy"), members=IdMap.load(path / "members.npy"),
                   arrays=arrays, sparse=sparse, item_index=faiss.read_index(str(path / ITEM_INDEX), flag),
                   member_index=faiss.read_index(str(path / MEMBER_INDEX), flag))

    def _item(self, item_id: str) -> int:
        idx = self.items.get(item_id)
        if idx is None:
            raise NotFound(f"unknown item {item_id!r}")
        return idx

    def member_scores(self, member_id: str) -> np.ndarray | None:
        """Collaborative scores of every item for a known member; None lets the caller fall back to cold start."""
        idx = self.members.get(member_id)
        if idx is None:
            return None
        return np.asarray(self.arrays["item_factors"] @ self.arrays["member_factors"][idx], dtype=np.float32)

    def cold_start_scores(self, features: dict[str, str]) -> np.ndarray:
        """LightFM scores for a member without history, from profile features; unknown keys and values count 0."""
        names = self.arrays["profile_names"]
        wanted = profile_names(features)
        pos = np.searchsorted(names, wanted)
        known = [p for p, n in zip(pos, wanted, strict=True) if p < len(names) and names[p] == n]
        vector = np.zeros(self.arrays["profile_embeddings"].shape[1], np.float32)
        if known:
            vector = np.asarray(self.arrays["profile_embeddings"][known]).mean(axis=0)
        return np.asarray(self.arrays["item_content"] @ vector + self.arrays["item_content_bias"], dtype=np.float32)

    def similar_items(self, item_id: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest items by content+collaborative embedding (cosine), from the FAISS item index."""
        idx = self._item(item_id)
        query = np.ascontiguousarray(self.arrays["item_content_unit"][idx:idx + 1], dtype=np.float32)
        scores, found = self.item_index.search(query, min(k + 1, len(self.items)))
        keep = (found[0] >= 0) & (found[0] != idx)
        return found[0][keep][:k].astype(np.int64), scores[0][keep][:k]

    def popularity(self, channel: str | None = None, store_id: str | None = None) -> np.ndarray:
        """Per-item popularity in a store, else on a channel, else overall: the first with any data wins."""
        for key, value in (("stores", store_id), ("channels", channel)):
            if value is None:
                continue
            names = self.arrays["popularity_store_ids" if key == "stores" else "popularity_channel_names"]
            pos = int(np.searchsorted(names, value))
            table = self.sparse[f"popularity_{key}"]
            if pos < len(names) and names[pos] == value and table[pos].nnz:
                return table[pos].toarray().ravel().astype(np.float32)
        return np.asarray(self.arrays["popularity"], dtype=np.float32)

    def basket_complements(self, item_ids: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Items to add to a basket: purchase lift (scaled to [0, 1]) blended with embedding similarity.

        Unknown basket items are ignored (a new product may not be in the bundle yet); a basket with no
        known item raises `NotFound`.
        """
        basket = self.items.to_internal(item_ids, strict=False)
        basket = np.unique(basket[basket >= 0])
        if len(basket) == 0:
            raise NotFound(f"none of the basket items is known: {list(item_ids)[:5]}")
        lift = np.asarray(self.sparse["complements"][basket].sum(axis=0), dtype=np.float32).ravel()
        lift /= max(float(lift.max()), 1e-12)
        unit = self.arrays["item_content_unit"]
        similarity = np.clip(np.asarray(unit @ np.asarray(unit[basket]).mean(axis=0)), 0.0, 1.0)
        blend = float(self.manifest["params"]["complement_blend"])
        return _rank(blend * lift + (1.0 - blend) * similarity, k, basket)
