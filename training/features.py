"""Side features for the hybrid model: item metadata and member profile as sparse one-hot matrices.

Feature names are `key=value` strings (`tier=gold`, `brand=brand_0007`) so a bundle can map a cold
member's profile onto learned feature embeddings by name, and unknown values simply find no column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from domain.idmap import IdMap
from domain.readers import Interactions
from domain.vocab import Col

MEMBER_FEATURE_KEYS = ("tier", "lifecycle_stage", "channel", "region")
"""Keys `ModelBundle.cold_start_scores` understands; `channel` is the member's preferred channel."""


@dataclass(frozen=True)
class FeatureMatrix:
    """Rows follow an IdMap; columns are named features; entries are 0/1 (models scale rows themselves)."""

    names: np.ndarray
    matrix: sp.csr_matrix

    @classmethod
    def from_pairs(cls, n_rows: int, rows: np.ndarray, names: np.ndarray) -> FeatureMatrix:
        """One-hot matrix from (row, feature name) pairs, with columns in sorted name order."""
        vocab, cols = np.unique(names.astype(str), return_inverse=True)
        matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_rows, len(vocab)))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return cls(vocab, matrix)

    def encode(self, names: list[str]) -> np.ndarray:
        """Dense weights for one entity from its feature names; names not in the vocabulary are ignored."""
        row = np.zeros(len(self.names), np.float32)
        pos = np.searchsorted(self.names, names)
        known = [p for p, n in zip(pos, names, strict=True) if p < len(self.names) and self.names[p] == n]
        row[known] = 1.0
        return row


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False).astype(str)


def item_features(items: pa.Table, item_map: IdMap) -> FeatureMatrix:
    """Department, category path, brand, price band and every attribute tag of each catalogue item."""
    rows = item_map.to_internal(_column(items, "item_id"))
    category = _column(items, "category")
    department = np.array([c.split("/")[0] for c in category.tolist()])
    parts = [(rows, np.char.add("category=", category)),
             (rows, np.char.add("department=", department)),
             (rows, np.char.add("brand=", _column(items, "brand"))),
             (rows, np.char.add("price_band=", _column(items, "price_band")))]
    attrs = items["attributes"].combine_chunks()
    lengths = np.diff(attrs.offsets.to_numpy())
    if lengths.sum():
        tags = attrs.flatten().to_numpy(zero_copy_only=False).astype(str)
        parts.append((np.repeat(rows, lengths), np.char.add("attr=", tags)))
    return FeatureMatrix.from_pairs(len(item_map), np.concatenate([p[0] for p in parts]),
                                    np.concatenate([p[1] for p in parts]))


def preferred_channel(interactions: Interactions, weights: np.ndarray) -> np.ndarray:
    """Each member's channel with the most positive event weight, '' for members without events."""
    channels = interactions.events[Col.CHANNEL].to_numpy(zero_copy_only=False).astype(str)
    vocab, code = np.unique(channels, return_inverse=True)
    totals = np.zeros((len(interactions.members), max(len(vocab), 1)))
    np.add.at(totals, (interactions.member_idx, code), np.maximum(weights, 0))
    best = np.where(totals.max(axis=1) > 0, vocab[totals.argmax(axis=1)] if len(vocab) else "", "")
    return best.astype(str)


def member_features(members: pa.Table, member_map: IdMap, channel: np.ndarray) -> FeatureMatrix:
    """Tier, lifecycle stage, home region and preferred channel (from `preferred_channel`) per member."""
    rows = member_map.to_internal(_column(members, "member_id"))
    parts = [(rows, np.char.add(f"{key}=", _column(members, key))) for key in ("tier", "lifecycle_stage", "region")]
    has = np.flatnonzero(channel != "")
    parts.append((has, np.char.add("channel=", channel[has])))
    return FeatureMatrix.from_pairs(len(member_map), np.concatenate([p[0] for p in parts]),
                                    np.concatenate([p[1] for p in parts]))


def profile_names(features: dict[str, str]) -> list[str]:
    """Feature names for a profile dict such as {"tier": "gold", "channel": "app"}; other keys are ignored."""
    return [f"{key}={value}" for key, value in features.items() if key in MEMBER_FEATURE_KEYS]
