"""A member's precomputed lists as one compact binary value: what the feature store holds for a member
when serving replicas do not map the member-side bundle arrays (`docs/scale.md`, "member state").

Layout (little endian), the same for every member of one materialisation:

    header   u8 format (1), u32 bundle version, u8 list count
    per list u8 kind (0: collaborative, then `INTENT_CODES`), u16 width
    per list int32 items[width] (item positions in that bundle, -1 where fewer), float32 scores[width]

Item positions are only meaningful in the bundle version the value names, so a reader serving another
version must not use them (`MemberLists.bundle_version`). Encoding is column-wise (numpy, one buffer for
a whole batch of members); decoding is one value at a time, on the request path.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from omnirec.domain.vocab import Intent

FORMAT = 1
COLLABORATIVE = 0
INTENT_CODES: Mapping[Intent, int] = {Intent.MIXED: 1, Intent.BUY_AGAIN: 2, Intent.DISCOVER: 3}
"""Kind code of each intent's list (never renumbered: stored values carry them)."""
_KINDS: Mapping[int, Intent | None] = {COLLABORATIVE: None, **{code: i for i, code in INTENT_CODES.items()}}
_HEADER = struct.Struct("<BIB")
_LIST = struct.Struct("<BH")


class MalformedLists(ValueError):
    """A stored value that is not a member-lists value of this format."""


@dataclass(frozen=True)
class TopList:
    """One list, best first, without padding: item positions in the bundle and their scores."""

    items: np.ndarray
    scores: np.ndarray

    def head(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.items[:n].astype(np.int64), self.scores[:n]


@dataclass(frozen=True)
class MemberLists:
    """A member's collaborative top list and per-intent lists, from bundle `bundle_version`."""

    bundle_version: int
    collaborative: TopList | None
    intents: Mapping[Intent, TopList]


@dataclass(frozen=True)
class ListColumns:
    """One kind of list for a batch of members: (members, width) item positions (-1 padded) and scores."""

    intent: Intent | None
    """None: the collaborative list."""
    items: np.ndarray
    scores: np.ndarray


def encode(bundle_version: int, lists: Sequence[ListColumns]) -> pa.BinaryArray:
    """One value per member row (every `ListColumns` has the same rows), as an Arrow binary column."""
    if not lists:
        raise ValueError("encode needs at least one list")
    rows = len(lists[0].items)
    head = _HEADER.pack(FORMAT, bundle_version, len(lists)) + b"".join(
        _LIST.pack(COLLABORATIVE if c.intent is None else INTENT_CODES[c.intent], c.items.shape[1]) for c in lists)
    parts = [np.broadcast_to(np.frombuffer(head, np.uint8), (rows, len(head)))]
    for c in lists:
        if c.items.shape != c.scores.shape or len(c.items) != rows:
            raise ValueError("encode: every list needs (members, width) items and scores of the same shape")
        parts.append(np.ascontiguousarray(c.items, "<i4").view(np.uint8).reshape(rows, -1))
        parts.append(np.ascontiguousarray(c.scores, "<f4").view(np.uint8).reshape(rows, -1))
    body = np.concatenate(parts, axis=1)
    width = body.shape[1]
    offsets = np.arange(0, (rows + 1) * width, width, dtype=np.int32)
    return pa.BinaryArray.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(body.tobytes())])


def encode_none(bundle_version: int, rows: int) -> pa.BinaryArray:
    """`rows` values of no list at all (count 0): what a member with a profile but unknown to the bundle gets,
    so a reader tells such a cold start apart from a known member whose entry is missing (not loaded, or
    evicted), which it must answer degraded."""
    value = np.frombuffer(_HEADER.pack(FORMAT, bundle_version, 0), np.uint8)
    offsets = np.arange(0, (rows + 1) * len(value), len(value), dtype=np.int32)
    return pa.BinaryArray.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets),
                                                           pa.py_buffer(np.tile(value, rows).tobytes())])


def decode(raw: bytes) -> MemberLists:
    """The lists of one stored value (padding dropped); `MalformedLists` when it is not one."""
    try:
        fmt, version, count = _HEADER.unpack_from(raw, 0)
        if fmt != FORMAT:
            raise MalformedLists(f"member lists format {fmt}, this reader reads {FORMAT}")
        at = _HEADER.size
        layout = []
        for _ in range(count):
            layout.append(_LIST.unpack_from(raw, at))
            at += _LIST.size
        collaborative, intents = None, {}
        for kind, width in layout:
            if kind not in _KINDS:
                raise MalformedLists(f"unknown list kind {kind}")
            items = np.frombuffer(raw, "<i4", width, at)
            scores = np.frombuffer(raw, "<f4", width, at + 4 * width)
            at += 8 * width
            keep = items >= 0
            top = TopList(items[keep], scores[keep])
            intent = _KINDS[kind]
            if intent is None:
                collaborative = top
            else:
                intents[intent] = top
    except (struct.error, ValueError) as exc:
        raise MalformedLists(str(exc)) from None
    if at != len(raw):
        raise MalformedLists(f"{len(raw) - at} bytes after the last list")
    return MemberLists(version, collaborative, intents)
