"""A published bundle, opened read-only for serving: the scores, searches and lookups the service needs.

Arrays are memory-mapped and indexes read with `IO_FLAG_MMAP`, so worker processes share their pages.
Returned item indexes are internal item positions; `bundle.items.to_external(idx)` turns them into item
ids. Unknown items raise `domain.errors.NotFound`; unknown members are None (the caller falls back).

A replica whose member state lives in the feature store loads the bundle with `member_state=False`: the
member ids and `MEMBER_ARRAYS` are not mapped at all, so its memory does not grow with members; every
member then reads as unknown here and their lists come from the store (`domain.member_lists`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp

from omnirec.bundle.format import (
    INTENT_ARRAYS,
    ITEMS,
    MANIFEST,
    MEMBER_ARRAYS,
    MEMBERS,
    OPTIONAL_ARRAYS,
    Array,
    Index,
    Manifest,
    Sparse,
)
from omnirec.domain.clock import parse_time
from omnirec.domain.errors import NotFound
from omnirec.domain.idmap import IdMap
from omnirec.domain.member_lists import ListColumns
from omnirec.domain.profile import ColdStartProfile
from omnirec.domain.topk import top_finite
from omnirec.domain.vocab import Intent


@dataclass(frozen=True)
class ModelBundle:
    """A loaded bundle: read-only, safe to share between threads."""

    path: Path
    manifest: Manifest
    items: IdMap
    members: IdMap
    arrays: dict[Array, np.ndarray] = field(repr=False)
    sparse: dict[Sparse, sp.csr_matrix] = field(repr=False)
    indexes: dict[Index, faiss.Index] = field(repr=False)
    member_count: int = 0
    """Members the bundle was trained on (also when their ids are not loaded)."""
    members_in_store: bool = False
    """Loaded without member state (`member_state=False`): members' lists are the feature store's."""

    @classmethod
    def load(cls, path: Path, mmap: bool = True, member_state: bool = True, member_index: bool = True) -> ModelBundle:
        """Open a bundle folder; with `mmap`, arrays and indexes are paged in on use, not copied. Without
        `member_state`, nothing that grows with members (ids, `MEMBER_ARRAYS`) is read; without
        `member_index`, the member arrays are mapped but no id lookup is built (batch jobs that walk rows)."""
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise NotFound(f"no model bundle at {path} ({MANIFEST} missing)")
        mode = "r" if mmap else None
        flag = faiss.IO_FLAG_MMAP if mmap else 0
        skip = frozenset() if member_state else MEMBER_ARRAYS
        # Plain ndarray views of the maps: same pages, without np.memmap's per-slice Python overhead.
        arrays = {name: np.asarray(np.load(path / f"{name}.npy", mmap_mode=mode, allow_pickle=False))
                  for name in Array
                  if name not in skip and (name not in OPTIONAL_ARRAYS or (path / f"{name}.npy").exists())}
        members = IdMap.load(path / MEMBERS) if member_state and member_index else IdMap.from_ids([])
        return cls(path=path, manifest=Manifest.read(path), items=IdMap.load(path / ITEMS),
                   members=members, arrays=arrays,
                   sparse={name: sp.load_npz(path / f"{name}.npz").tocsr() for name in Sparse},
                   indexes={name: faiss.read_index(str(path / name), flag) for name in Index},
                   member_count=member_count(path), members_in_store=not member_state)

    @property
    def version(self) -> int:
        return self.manifest.version

    def _item(self, item_id: str) -> int:
        idx = self.items.get(item_id)
        if idx is None:
            raise NotFound(f"unknown item {item_id!r}")
        return idx

    def member_list_columns(self, rows: slice | np.ndarray, depth: int) -> list[ListColumns]:
        """The lists of the members at `rows` (a range, or row numbers: what one Spark partition holds) as the
        feature store holds them: `depth` collaborative items (from the precomputed lists when they are that
        deep, else searched in the member index, as `member_top` does) and every intent's lists."""
        top_items = self.arrays.get(Array.MEMBER_TOP_ITEMS)
        if top_items is not None and top_items.shape[1] >= depth:
            items, scores = top_items[rows, :depth], self.arrays[Array.MEMBER_TOP_SCORES][rows, :depth]
        else:
            query = np.ascontiguousarray(self.arrays[Array.MEMBER_FACTORS][rows], dtype=np.float32)
            scores, items = self.indexes[Index.MEMBER].search(query, min(depth, len(self.items)))
        out = [ListColumns(None, np.asarray(items), np.asarray(scores))]
        for intent, (item_name, score_name) in INTENT_ARRAYS.items():
            if item_name in self.arrays:
                out.append(ListColumns(intent, np.asarray(self.arrays[item_name][rows]),
                                       np.asarray(self.arrays[score_name][rows])))
        return out

    def member_scores(self, member_id: str) -> np.ndarray | None:
        """Collaborative scores of every item for a known member; None lets the caller fall back to cold start."""
        idx = self.members.get(member_id)
        if idx is None:
            return None
        return np.asarray(self.arrays[Array.ITEM_FACTORS] @ self.arrays[Array.MEMBER_FACTORS][idx], dtype=np.float32)

    def member_vector(self, member_id: str) -> np.ndarray | None:
        """A known member's collaborative factors (an item's score is its factor row times these); None if
        unknown. Scoring a few items costs that much less than `member_scores` of the whole catalogue."""
        idx = self.members.get(member_id)
        return None if idx is None else np.asarray(self.arrays[Array.MEMBER_FACTORS][idx], dtype=np.float32)

    @property
    def item_factors(self) -> np.ndarray:
        """Item factor rows, in internal item order (memory-mapped)."""
        return self.arrays[Array.ITEM_FACTORS]

    def member_top(self, member_id: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """A known member's n best items (None if unknown): a row of the precomputed lists when they are deep
        enough, else a search of the member->item index (exact or HNSW); both give the same answer."""
        row = self.members.get(member_id)
        if row is None:
            return None
        top_items = self.arrays.get(Array.MEMBER_TOP_ITEMS)
        if top_items is not None and n <= top_items.shape[1]:
            found, scores = top_items[row, :n], self.arrays[Array.MEMBER_TOP_SCORES][row, :n]
            keep = found >= 0
            return found[keep].astype(np.int64), np.asarray(scores[keep])
        query = np.ascontiguousarray(self.arrays[Array.MEMBER_FACTORS][row:row + 1], dtype=np.float32)
        scores, found = self.indexes[Index.MEMBER].search(query, min(n, len(self.items)))
        keep = found[0] >= 0
        return found[0][keep].astype(np.int64), scores[0][keep]

    def intent_top(self, member_id: str, intent: Intent, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """A known member's precomputed list for `intent` (at most n, best first); None if the member is
        unknown or the bundle has no lists for the intent."""
        row = self.members.get(member_id)
        names = INTENT_ARRAYS[intent]
        if row is None or names[0] not in self.arrays:
            return None
        found, scores = self.arrays[names[0]][row, :n], self.arrays[names[1]][row, :n]
        keep = found >= 0
        return found[keep].astype(np.int64), np.asarray(scores[keep])

    def cycle_days(self, idx: np.ndarray) -> np.ndarray:
        """Repurchase cycle in days of each item in `idx`: its own median gap, else the catalogue's median
        (an item few members bought twice still has a plausible cycle); all NaN when the bundle has none."""
        cycles = self.arrays.get(Array.ITEM_CYCLE_DAYS)
        if cycles is None:
            return np.full(len(idx), np.nan)
        found = np.asarray(cycles[np.asarray(idx, dtype=np.int64)], dtype=np.float64)
        return np.where(np.isnan(found), self._median_cycle_days, found)

    @cached_property
    def _median_cycle_days(self) -> float:
        cycles = np.asarray(self.arrays[Array.ITEM_CYCLE_DAYS], dtype=np.float64)
        known = cycles[np.isfinite(cycles)]
        return float(np.median(known)) if len(known) else float("nan")

    @cached_property
    def lists_as_of(self) -> float | None:
        """Unix seconds of the last event the intent lists saw (None: no lists); later purchases are live."""
        if not self.manifest.lists_as_of:
            return None
        return parse_time(self.manifest.lists_as_of, "manifest.lists_as_of").timestamp()

    def cold_start_scores(self, profile: ColdStartProfile) -> np.ndarray:
        """LightFM scores for a member without history, from their profile; values training never saw count 0."""
        names = self.arrays[Array.PROFILE_NAMES]
        wanted = profile.feature_names()
        pos = np.searchsorted(names, wanted)
        known = [p for p, n in zip(pos, wanted, strict=True) if p < len(names) and names[p] == n]
        embeddings = self.arrays[Array.PROFILE_EMBEDDINGS]
        vector = np.asarray(embeddings[known]).mean(axis=0) if known else np.zeros(embeddings.shape[1], np.float32)
        return np.asarray(self.arrays[Array.ITEM_CONTENT] @ vector + self.arrays[Array.ITEM_CONTENT_BIAS],
                          dtype=np.float32)

    def similar_items(self, item_id: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest items by content+collaborative embedding (cosine), from the FAISS item index."""
        idx = self._item(item_id)
        query = np.ascontiguousarray(self.arrays[Array.ITEM_CONTENT_UNIT][idx:idx + 1], dtype=np.float32)
        scores, found = self.indexes[Index.ITEM].search(query, min(k + 1, len(self.items)))
        keep = (found[0] >= 0) & (found[0] != idx)
        return found[0][keep][:k].astype(np.int64), scores[0][keep][:k]

    def popularity(self, channel: str | None = None, store_id: str | None = None) -> np.ndarray:
        """Per-item popularity in a store, else on a channel, else overall: the first with any data wins."""
        for names, table, value in ((Array.POPULARITY_STORE_IDS, Sparse.POPULARITY_STORES, store_id),
                                    (Array.POPULARITY_CHANNEL_NAMES, Sparse.POPULARITY_CHANNELS, channel)):
            if value is None:
                continue
            pos = int(np.searchsorted(self.arrays[names], value))
            if pos < len(self.arrays[names]) and self.arrays[names][pos] == value and self.sparse[table][pos].nnz:
                return self.sparse[table][pos].toarray().ravel().astype(np.float32)
        return np.asarray(self.arrays[Array.POPULARITY], dtype=np.float32)

    def basket_complements(self, item_ids: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Items to add to a basket: purchase lift (scaled to [0, 1]) blended with embedding similarity.

        Unknown basket items are ignored (a new product may not be in the bundle yet); a basket with no
        known item raises `NotFound`.
        """
        basket = self.items.to_internal(item_ids, strict=False)
        basket = np.unique(basket[basket >= 0])
        if len(basket) == 0:
            raise NotFound(f"none of the basket items is known: {list(item_ids)[:5]}")
        lift = np.asarray(self.sparse[Sparse.COMPLEMENTS][basket].sum(axis=0), dtype=np.float32).ravel()
        lift /= max(float(lift.max()), 1e-12)
        unit = self.arrays[Array.ITEM_CONTENT_UNIT]
        similarity = np.clip(np.asarray(unit @ np.asarray(unit[basket]).mean(axis=0)), 0.0, 1.0)
        blend = self.manifest.complement_blend
        scores = blend * lift + (1.0 - blend) * similarity
        scores[basket] = -np.inf
        best = top_finite(scores, k)
        return best, scores[best]


def member_ids(path: Path) -> np.ndarray:
    """The member ids of the bundle at `path`, memory-mapped (paged in only where read)."""
    return np.load(Path(path) / MEMBERS, mmap_mode="r", allow_pickle=False)


def member_count(path: Path) -> int:
    """Members of the bundle at `path`, from the id file's header."""
    return int(member_ids(path).shape[0])
