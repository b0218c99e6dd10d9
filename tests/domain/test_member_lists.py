"""A member's lists survive the compact binary value the feature store holds, padding dropped."""

from __future__ import annotations

import numpy as np
import pytest

from omnirec.domain.member_lists import ListColumns, MalformedLists, decode, encode
from omnirec.domain.vocab import Intent


def _columns() -> list[ListColumns]:
    collaborative = ListColumns(None, np.array([[4, 2, 9], [1, -1, -1]], np.int32),
                                np.array([[0.9, 0.5, 0.1], [0.7, 0.0, 0.0]], np.float32))
    again = ListColumns(Intent.BUY_AGAIN, np.array([[-1, -1], [3, 5]], np.int32),
                        np.array([[0, 0], [2.5, 1.5]], np.float32))
    return [collaborative, again]


def test_each_member_gets_its_own_lists_back() -> None:
    values = encode(7, _columns()).to_pylist()
    first, second = decode(values[0]), decode(values[1])
    assert first.bundle_version == second.bundle_version == 7
    assert first.collaborative is not None and first.collaborative.items.tolist() == [4, 2, 9]
    assert first.collaborative.scores.tolist() == pytest.approx([0.9, 0.5, 0.1])
    assert first.intents[Intent.BUY_AGAIN].items.tolist() == []
    assert second.collaborative is not None and second.collaborative.items.tolist() == [1]
    assert second.intents[Intent.BUY_AGAIN].items.tolist() == [3, 5]
    assert Intent.DISCOVER not in second.intents
    assert len(values[0]) == 6 + 2 * 3 + 8 * 3 + 8 * 2


@pytest.mark.parametrize("raw", [b"", b"\x02" + bytes(5), encode(1, _columns()).to_pylist()[0][:-1],
                                 encode(1, _columns()).to_pylist()[0] + b"x"])
def test_anything_else_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedLists):
        decode(raw)
