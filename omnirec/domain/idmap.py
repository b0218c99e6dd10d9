"""Mapping between external ids (strings the retailer uses) and dense internal indexes (matrix rows).

Kept in one place, and shipped beside every embedding file and index, so an index row can never be
read against the wrong id list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnirec.domain.errors import NotFound


@dataclass(frozen=True)
class IdMap:
    external_ids: np.ndarray
    """External ids as a fixed-width unicode array; position = internal index."""
    _index: dict[str, int] = field(repr=False, compare=False)

    @classmethod
    def from_ids(cls, ids: Iterable[str] | np.ndarray) -> IdMap:
        """Ids keep their order of first appearance; duplicates are rejected."""
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).astype(str)
        index = {v: i for i, v in enumerate(arr.tolist())}
        if len(index) != len(arr):
            raise ValueError("IdMap.from_ids: ids must be unique")
        return cls(arr, index)

    @classmethod
    def from_values(cls, values: np.ndarray) -> IdMap:
        """Unique values in sorted order, so the same data always gives the same map."""
        return cls.from_ids(np.unique(np.asarray(values).astype(str)))

    def __len__(self) -> int:
        return len(self.external_ids)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._index

    def get(self, external_id: str) -> int | None:
        return self._index.get(external_id)

    def to_internal(self, ids: Iterable[str], strict: bool = True) -> np.ndarray:
        """Internal indexes; unknown ids raise `NotFound` when strict, else map to -1."""
        ids = list(ids)
        out = np.fromiter((self._index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        if strict and (out < 0).any():
            missing = [i for i, o in zip(ids, out, strict=False) if o < 0][:5]
            raise NotFound(f"unknown ids: {missing}")
        return out

    def to_external(self, idx: np.ndarray) -> np.ndarray:
        return self.external_ids[np.asarray(idx, dtype=np.int64)]

    def save(self, path: Path) -> None:
        np.save(path, self.external_ids.astype(str), allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> IdMap:
        return cls.from_ids(np.load(path, allow_pickle=False))
