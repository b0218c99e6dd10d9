"""Side features for the hybrid model: item metadata and member profile as sparse one-hot matrices.

Feature names are `key=value` strings (`tier=gold`, `brand=brand_0007`) so a bundle can map a cold
member's profile onto learned feature embeddings by name, and unknown values simply find no column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from omnirec.domain.idmap import IdMap
from omnirec.domain.profile import CHANNEL_NAMES, PROFILE_KEYS, feature_name, preferred_channels
from omnirec.domain.vocab import Col
from omnirec.training.columns import encode


@dataclass(frozen=True)
class FeatureMatrix:
    """Rows follow an IdMap; columns are named features; entries are 0/1 (models scale rows themselves)."""

    names: np.ndarray
    """Feature names in sorted order, so a name is found by binary search."""
    matrix: sp.csr_matrix

    @classmethod
    def from_parts(cls, n_rows: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> FeatureMatrix:
        """One-hot matrix from (rows, codes, names) parts: row r has feature names[code]; code -1 means none."""
        offsets = np.cumsum([0] + [len(names) for _, _, names in parts])
        all_names = np.concatenate([names for _, _, names in parts]).astype(str)
        order = np.argsort(all_names, kind="stable")
        column_of = np.empty(len(order), np.int64)
        column_of[order] = np.arange(len(order))
        rows = np.concatenate([r[c >= 0] for r, c, _ in parts])
        cols = np.concatenate([column_of[c[c >= 0] + off] for (_, c, _), off in zip(parts, offsets, strict=False)])
        matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_rows, len(all_names)))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return cls(all_names[order], matrix)


def _part(rows: np.ndarray, column: pa.ChunkedArray | pa.Array, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names, codes = encode(column)
    return rows, codes, np.char.add(feature_name(key, ""), names) if len(names) else names


def item_features(items: pa.Table, item_map: IdMap) -> FeatureMatrix:
    """Department, category path, brand, price band and every attribute tag of each catalogue item."""
    rows = item_map.to_internal(items["item_id"].to_numpy(zero_copy_only=False).astype(str))
    department = pc.list_element(pc.split_pattern(items["category"], "/"), 0)
    attrs = items["attributes"].combine_chunks()
    lengths = np.diff(attrs.offsets.to_numpy())
    return FeatureMatrix.from_parts(len(item_map), [
        _part(rows, items["category"], "category"), _part(rows, department, "department"),
        _part(rows, items["brand"], "brand"), _part(rows, items["price_band"], "price_band"),
        _part(np.repeat(rows, lengths), attrs.flatten(), "attr")])


def member_activity(events: pa.Table, members: IdMap, until_ts: int) -> np.ndarray:
    """Events per member and channel (columns in `Channel` order) up to `until_ts`, counted as the feature
    store counts them, so `domain.profile.preferred_channels` gives both the same preferred channel."""
    seen = events.filter(pc.and_(pc.is_valid(events[Col.MEMBER_ID]), pc.less_equal(events[Col.TS], until_ts)))
    rows = members.to_internal(seen[Col.MEMBER_ID].to_numpy(zero_copy_only=False).astype(str), strict=False)
    codes = pc.index_in(seen[Col.CHANNEL], value_set=pa.array(CHANNEL_NAMES)).to_numpy(zero_copy_only=False)
    keep = rows >= 0
    n_channels = len(CHANNEL_NAMES)
    return np.bincount(rows[keep] * n_channels + codes[keep].astype(np.int64),
                       minlength=len(members) * n_channels).reshape(len(members), n_channels)


def member_features(members: pa.Table, member_map: IdMap, activity: np.ndarray) -> FeatureMatrix:
    """One column per `ColdStartProfile` field value: tier, lifecycle stage, preferred channel (from
    `member_activity`) and home region; serving builds the same names from the same fields. An empty value
    (no events, a region nobody knows) is no feature, as `ColdStartProfile` leaves it out."""
    rows = member_map.to_internal(members["member_id"].to_numpy(zero_copy_only=False).astype(str))
    columns = {"channel": (np.arange(len(member_map)), preferred_channels(activity))}
    for key in PROFILE_KEYS:
        if key != "channel":
            columns[key] = (rows, members[key].to_numpy(zero_copy_only=False).astype(str))
    return FeatureMatrix.from_parts(len(member_map), [
        _part(at, pa.array(np.where(values == "", None, values), pa.string()), key)
        for key, (at, values) in columns.items()])
