"""Purchase baskets and the next-basket split that matches what the service answers.

A basket is one member's purchases on one UTC day: the event log carries no basket id, and a day is what
a member's trip to the store (or one online order) amounts to. The split is the one the next-basket
literature uses (Li et al., "A Next Basket Recommendation Reality Check", TOIS 2023), in time: everything
up to the cut-off day is history, and each member's target is their first basket after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import scipy.sparse as sp

from omnirec.domain.clock import DAY
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.readers import Interactions
from omnirec.domain.vocab import Col, EventType
from omnirec.training.columns import encode


@dataclass(frozen=True)
class Baskets:
    """Distinct (basket, item) purchase lines sorted by member, day, item; arrays are aligned per line."""

    member: np.ndarray
    """int64 member index per line."""
    item: np.ndarray
    """int64 item index per line."""
    day: np.ndarray
    """int64 unix day of the basket."""
    basket: np.ndarray
    """int64 basket number, increasing with (member, day); consecutive from 0 within a `Baskets`."""
    store: np.ndarray
    """int64 index into `store_names` (-1 for none)."""
    price: np.ndarray
    """float64 unit price paid."""
    store_names: np.ndarray
    n_members: int
    n_items: int

    @classmethod
    def from_interactions(cls, interactions: Interactions) -> Baskets:
        """Purchase rows of the log grouped into member-day baskets; repeats of an item within a basket count once."""
        events = interactions.events
        bought = pc.fill_null(pc.equal(events[Col.EVENT_TYPE], EventType.PURCHASE.value), False)
        bought = bought.to_numpy(zero_copy_only=False)
        store_names, store_codes = encode(events[Col.STORE_ID])
        member = interactions.member_idx[bought].astype(np.int64)
        item = interactions.item_idx[bought].astype(np.int64)
        day = events[Col.TS].to_numpy()[bought] // DAY
        order = np.lexsort((item, day, member))
        member, item, day = member[order], item[order], day[order]
        first = np.ones(len(order), bool)
        first[1:] = (member[1:] != member[:-1]) | (day[1:] != day[:-1]) | (item[1:] != item[:-1])
        keep = order[first]
        return cls._build(member[first], item[first], day[first], store_codes[bought][keep],
                          events[Col.PRICE].to_numpy()[bought][keep], store_names,
                          len(interactions.members), len(interactions.items))

    @classmethod
    def _build(cls, member: np.ndarray, item: np.ndarray, day: np.ndarray, store: np.ndarray, price: np.ndarray,
               store_names: np.ndarray, n_members: int, n_items: int) -> Baskets:
        new = np.ones(len(member), bool)
        new[1:] = (member[1:] != member[:-1]) | (day[1:] != day[:-1])
        return cls(member=member, item=item, day=day, basket=np.cumsum(new) - 1, store=store, price=price,
                   store_names=store_names, n_members=n_members, n_items=n_items)

    def __len__(self) -> int:
        return len(self.member)

    def select(self, lines: np.ndarray) -> Baskets:
        """The lines under a boolean mask, basket numbers made consecutive again."""
        return Baskets._build(self.member[lines], self.item[lines], self.day[lines], self.store[lines],
                              self.price[lines], self.store_names, self.n_members, self.n_items)

    def until(self, last_day: int) -> Baskets:
        """What was known at the end of `last_day`: the only history features may read."""
        return self.select(self.day <= last_day)

    @property
    def n_baskets(self) -> int:
        return int(self.basket[-1]) + 1 if len(self) else 0

    def basket_member(self) -> np.ndarray:
        """Member of each basket number."""
        out = np.empty(self.n_baskets, np.int64)
        out[self.basket] = self.member
        return out

    def basket_day(self) -> np.ndarray:
        """Day of each basket number."""
        out = np.empty(self.n_baskets, np.int64)
        out[self.basket] = self.day
        return out

    def counts(self) -> sp.csr_matrix:
        """Member x item number of baskets that held the item (float32)."""
        matrix = sp.csr_matrix((np.ones(len(self), np.float32), (self.member, self.item)),
                               shape=(self.n_members, self.n_items))
        matrix.sum_duplicates()
        return matrix


@dataclass(frozen=True)
class NextBasketSplit:
    """History up to `cut_day` and, for each test member, the items of their first basket after it."""

    history: Baskets
    members: np.ndarray
    """Test members (sorted): a basket after the cut-off and at least one before it."""
    targets: sp.csr_matrix
    """len(members) x n_items, 1 where the item is in the member's target basket."""
    seen: sp.csr_matrix
    """len(members) x n_items, 1 where the member bought the item before the cut-off (repeat vs explore)."""
    cut_day: int


def next_basket_split(baskets: Baskets, test_days: int, cut_day: int | None = None) -> NextBasketSplit:
    """Cut `test_days` before the last day (or at `cut_day`); test on each member's next basket after it."""
    if len(baskets) == 0:
        raise InvalidArgument("events", "no purchases to split into baskets")
    cut = int(baskets.day.max()) - test_days if cut_day is None else int(cut_day)
    history = baskets.until(cut)
    after = baskets.day > cut
    if not after.any() or len(history) == 0:
        raise InvalidArgument("test_days", f"{test_days} days leaves no purchase before or after the cut-off")
    member, item, day = baskets.member[after], baskets.item[after], baskets.day[after]
    first_day = np.full(baskets.n_members, np.iinfo(np.int64).max)
    np.minimum.at(first_day, member, day)
    has_history = np.zeros(baskets.n_members, bool)
    has_history[history.member] = True
    target = (day == first_day[member]) & has_history[member]
    members = np.unique(member[target])
    row = np.searchsorted(members, member[target])
    targets = sp.csr_matrix((np.ones(len(row), np.float32), (row, item[target])),
                            shape=(len(members), baskets.n_items))
    targets.sum_duplicates()
    targets.data[:] = 1.0
    seen = history.counts()[members]
    seen.data[:] = 1.0
    return NextBasketSplit(history=history, members=members, targets=targets, seen=sp.csr_matrix(seen), cut_day=cut)
