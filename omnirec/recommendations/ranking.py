"""Ranking as plain typed functions over numpy arrays: no grpc, no Redis.

Everything here is vectorised over the catalogue (argpartition, boolean masks), never a Python loop over
items.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

import numpy as np

from omnirec.domain.errors import NotFound
from omnirec.domain.idmap import IdMap
from omnirec.domain.member_lists import MemberLists
from omnirec.domain.profile import ColdStartProfile
from omnirec.domain.topk import top_finite
from omnirec.domain.vocab import Channel, Intent, ItemId, MemberId, StoreId


class Reason(StrEnum):
    """Why an item is in an answer (main score source) or which filter every item passed."""

    COLLABORATIVE = "collaborative"
    CONTENT_COLD_START = "content_cold_start"
    POPULAR_IN_STORE = "popular_in_store"
    POPULAR_IN_CHANNEL = "popular_in_channel"
    POPULAR = "popular"
    SIMILAR_ITEM = "similar_item"
    BASKET_COMPLEMENT = "basket_complement"
    IN_STOCK_AT_STORE = "in_stock_at_store"
    IN_STOCK_ONLINE = "in_stock_online"
    EXCLUDED_PURCHASED = "excluded_purchased"
    CATEGORY_FILTER = "category_filter"
    NEXT_BASKET = "next_basket"
    """The learned next-basket ranker's list (`Intent.MIXED`)."""
    BUY_AGAIN = "buy_again"
    DISCOVER = "discover"


class Bundle(Protocol):
    """What ranking needs from a model bundle (`bundle.ModelBundle`)."""

    items: IdMap
    members: IdMap
    """Empty when `members_in_store`."""
    members_in_store: bool
    """Member state (lists) is read from the feature store, not held by the bundle."""

    @property
    def version(self) -> int: ...

    def member_scores(self, member_id: str) -> np.ndarray | None: ...
    def member_top(self, member_id: str, n: int) -> tuple[np.ndarray, np.ndarray] | None: ...
    def cold_start_scores(self, profile: ColdStartProfile) -> np.ndarray: ...
    def similar_items(self, item_id: str, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def popularity(self, channel: str | None = None, store_id: str | None = None) -> np.ndarray: ...
    def basket_complements(self, item_ids: list[str], k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def intent_top(self, member_id: str, intent: Intent, n: int) -> tuple[np.ndarray, np.ndarray] | None: ...
    def cycle_days(self, idx: np.ndarray) -> np.ndarray: ...
    @property
    def lists_as_of(self) -> float | None: ...


@dataclass(frozen=True)
class CategoryIndex:
    """Item masks per category prefix ("home" and "home/kitchen" for an item in "home/kitchen").

    Built once per bundle so a category filter costs one lookup instead of string matching 100k items.
    """

    masks: Mapping[str, np.ndarray]
    n_items: int
    never: np.ndarray | None = None
    """Items no answer may contain (`RecommendationConfig`); None when nothing is excluded."""

    @classmethod
    def from_categories(cls, categories: np.ndarray, never_items: np.ndarray | None = None,
                        never_categories: tuple[str, ...] = ()) -> CategoryIndex:
        """`never_items` is a mask over items; `never_categories` adds every item under those paths."""
        uniques, inverse = np.unique(np.asarray(categories).astype(str), return_inverse=True)
        prefix_codes: dict[str, list[int]] = {}
        for code, path in enumerate(uniques.tolist()):
            parts = path.split("/")
            for depth in range(1, len(parts) + 1):
                prefix_codes.setdefault("/".join(parts[:depth]), []).append(code)
        masks = {p: np.isin(inverse, codes) for p, codes in prefix_codes.items()}
        index = cls(masks, len(categories))
        never = np.zeros(len(categories), bool) if never_items is None else np.asarray(never_items, bool).copy()
        for prefix in never_categories:
            never |= index.mask(prefix)
        return cls(masks, len(categories), never if never.any() else None)

    def allowed(self, idx: np.ndarray) -> np.ndarray:
        """True for the item indexes (>= 0) an answer may contain."""
        return np.ones(len(idx), bool) if self.never is None else ~self.never[np.where(idx >= 0, idx, 0)]

    def mask(self, prefix: str) -> np.ndarray:
        """Items under `prefix` (a whole path segment); an unknown category matches nothing."""
        found = self.masks.get(prefix.strip("/"))
        return found if found is not None else np.zeros(self.n_items, dtype=bool)


def isin(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """`np.isin(values, among)` for the short index arrays of one request. numpy's default for integers is a
    lookup table as long as the values' range (item indexes span the catalogue): 50-400 us a call, the
    largest single cost of an intent answer; a sort and a binary search cost a few us."""
    values, among = np.asarray(values), np.asarray(among)
    if not len(values) or not len(among):
        return np.zeros(len(values), dtype=bool)
    ordered = np.sort(among)
    return ordered[np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)] == values


@dataclass(frozen=True)
class Filters:
    category: str = ""
    in_stock_only: bool = False
    exclude_purchased: bool = False


@dataclass(frozen=True)
class MemberContext:
    """What the feature store knew about the caller; empty when it was unreachable (degraded)."""

    member_id: MemberId | None = None
    profile: ColdStartProfile | None = None
    purchased: Mapping[ItemId, float] = field(default_factory=dict)
    """Every item the member bought -> unix seconds of its last purchase, most recent first."""
    lists: MemberLists | None = None
    """The member's precomputed lists from the feature store (member state in the store), when they match
    the serving bundle's version."""


@dataclass(frozen=True)
class Ranked:
    """Candidates best first: item indexes into the bundle's item map, scores and one reason each."""

    idx: np.ndarray
    scores: np.ndarray
    reasons: list[Reason]
    applied: list[Reason]

    def take(self, keep: np.ndarray, k: int, applied: Reason | None = None) -> Ranked:
        """The candidates where `keep` is True, at most `k` of them, in order; `applied` names the filter."""
        sel = np.flatnonzero(keep)[:k]
        filters = [*self.applied, applied] if applied else self.applied
        return Ranked(self.idx[sel], self.scores[sel], [self.reasons[i] for i in sel.tolist()], filters)

    def head(self, k: int) -> Ranked:
        return Ranked(self.idx[:k], self.scores[:k], self.reasons[:k], self.applied)


def overfetch(k: int, filters: Filters) -> int:
    """Candidates to rank before the stock check, which can only run on a short list (one Redis read)."""
    return 4 * k + 20 if filters.in_stock_only else k


def personal_scores(bundle: Bundle, member: MemberContext, channel: Channel,
                    store_id: StoreId | None) -> tuple[np.ndarray, Reason]:
    """Collaborative scores for a member the model knows; else the content model on the member's profile;
    else popularity for the channel and store (an unknown member is a cold start, never an error)."""
    if member.member_id:
        scores = bundle.member_scores(member.member_id)
        if scores is not None:
            return scores, Reason.COLLABORATIVE
    if member.profile is not None:
        return bundle.cold_start_scores(member.profile), Reason.CONTENT_COLD_START
    reason = Reason.POPULAR_IN_STORE if store_id else Reason.POPULAR_IN_CHANNEL
    return bundle.popularity(channel.value, store_id), reason


def _exclusions(bundle: Bundle, categories: CategoryIndex, scores: np.ndarray, filters: Filters,
                excluded_ids: list[ItemId]) -> tuple[np.ndarray, list[Reason]]:
    """A float copy of `scores` with filtered-out items at -inf, and the filters that were applied."""
    out = np.array(scores, dtype=np.float32, copy=True)
    applied: list[Reason] = []
    if filters.category:
        out[~categories.mask(filters.category)] = -np.inf
        applied.append(Reason.CATEGORY_FILTER)
    if excluded_ids:
        idx = bundle.items.to_internal(excluded_ids, strict=False)
        out[idx[idx >= 0]] = -np.inf
    if categories.never is not None:
        out[categories.never] = -np.inf
    return out, applied


def recommend(bundle: Bundle, categories: CategoryIndex, member: MemberContext, channel: Channel,
              store_id: StoreId | None, n: int, filters: Filters) -> Ranked:
    """The member's best `n` candidates after category and purchase filters (stock is checked later).

    Without a category filter a known member's candidates come from `bundle.member_top` (a row of the
    precomputed lists, or an index search) instead of scoring the whole catalogue. When member state is in
    the feature store the member's stored list is the candidates (`_from_stored_list`).
    """
    excluded = list(member.purchased) if filters.exclude_purchased else []
    applied = [Reason.EXCLUDED_PURCHASED] if filters.exclude_purchased and member.member_id is not None else []
    if member.lists is not None and member.lists.collaborative is not None:
        return _from_stored_list(bundle, categories, member, channel, store_id, n, filters, excluded, applied)
    if member.member_id and not filters.category:
        wanted = n + len(excluded) + (n if categories.never is not None else 0)
        found = bundle.member_top(member.member_id, wanted)
        if found is not None:
            idx, scores = found
            drop = bundle.items.to_internal(excluded, strict=False)
            keep = np.flatnonzero(~isin(idx, drop) & categories.allowed(idx))[:n]
            if len(keep) == n or len(idx) < wanted:
                return Ranked(idx[keep], scores[keep], [Reason.COLLABORATIVE] * len(keep), applied)
    return _scored(bundle, categories, member, channel, store_id, n, filters, excluded, applied)


def _scored(bundle: Bundle, categories: CategoryIndex, member: MemberContext, channel: Channel,
            store_id: StoreId | None, n: int, filters: Filters, excluded: list[ItemId], applied: list[Reason],
            taken: np.ndarray | None = None) -> Ranked:
    """The best `n` of the whole catalogue by `personal_scores`, after the filters and without `taken`."""
    scores, reason = personal_scores(bundle, member, channel, store_id)
    masked, filtered = _exclusions(bundle, categories, scores, filters, excluded)
    if taken is not None:
        masked[taken] = -np.inf
    best = top_finite(masked, n)
    return Ranked(best, masked[best], [reason] * len(best), filtered + applied)


def _from_stored_list(bundle: Bundle, categories: CategoryIndex, member: MemberContext, channel: Channel,
                      store_id: StoreId | None, n: int, filters: Filters, excluded: list[ItemId],
                      applied: list[Reason]) -> Ranked:
    """The stored collaborative list after the filters; when the filters leave fewer than `n` of its items
    (a replica without member state cannot score the catalogue for the member), the rest comes from the
    member's profile (content) or popularity, after them."""
    top = member.lists.collaborative if member.lists is not None else None
    if top is None:
        raise ValueError("_from_stored_list needs a member with a stored collaborative list")
    idx, scores = top.items.astype(np.int64), np.asarray(top.scores, dtype=np.float32)
    drop = bundle.items.to_internal(excluded, strict=False)
    keep = ~isin(idx, drop) & categories.allowed(idx)
    if filters.category:
        keep &= categories.mask(filters.category)[idx]
    head = np.flatnonzero(keep)[:n]
    filtered = [Reason.CATEGORY_FILTER] if filters.category else []
    ranked = Ranked(idx[head], scores[head], [Reason.COLLABORATIVE] * len(head), filtered + applied)
    if len(head) == n:
        return ranked
    rest = _scored(bundle, categories, replace(member, member_id=None, lists=None), channel, store_id,
                   n - len(head), filters, excluded, applied, taken=idx[head])
    return Ranked(np.concatenate([ranked.idx, rest.idx]), np.concatenate([ranked.scores, rest.scores]),
                  ranked.reasons + rest.reasons, rest.applied)


def _filter_list(idx: np.ndarray, scores: np.ndarray, reason: Reason, categories: CategoryIndex,
                 filters: Filters, drop_idx: np.ndarray) -> Ranked:
    keep = (idx >= 0) & ~isin(idx, drop_idx) & categories.allowed(idx)
    applied: list[Reason] = []
    if filters.category:
        keep &= categories.mask(filters.category)[np.where(idx >= 0, idx, 0)]
        applied.append(Reason.CATEGORY_FILTER)
    idx, scores = idx[keep], np.asarray(scores, dtype=np.float32)[keep]
    return Ranked(idx, scores, [reason] * len(idx), applied)


def similar(bundle: Bundle, categories: CategoryIndex, item_id: ItemId, n: int, filters: Filters) -> Ranked:
    """Nearest items to `item_id` (itself excluded); `NotFound` if the catalogue lacks it."""
    if item_id not in bundle.items:
        raise NotFound(f"item_id: {item_id!r} is not in the catalogue")
    wide = n + 1 if not filters.category else max(4 * n, 100)
    idx, scores = bundle.similar_items(item_id, min(wide, len(bundle.items)))
    self_idx = np.array([bundle.items.get(item_id)], dtype=np.int64)
    return _filter_list(np.asarray(idx, dtype=np.int64), scores, Reason.SIMILAR_ITEM, categories, filters, self_idx)


def basket(bundle: Bundle, categories: CategoryIndex, item_ids: list[ItemId], member_scores: np.ndarray | None,
           n: int, filters: Filters) -> Ranked:
    """Complements of the basket (its own items excluded), re-ranked by the member's taste when known.

    Unknown basket items are ignored; a basket with no known item is `NotFound`.
    """
    basket_idx = bundle.items.to_internal(item_ids, strict=False)
    known = [i for i, x in zip(item_ids, basket_idx.tolist(), strict=True) if x >= 0]
    if not known:
        raise NotFound("basket_item_ids: none of the items is in the catalogue")
    wide = max(4 * n, 100)
    idx, scores = bundle.basket_complements(known, min(wide, len(bundle.items)))
    idx, scores = np.asarray(idx, dtype=np.int64), np.asarray(scores, dtype=np.float32)
    if member_scores is not None and len(idx):
        # Equal blend on standardised scales, so neither source dominates by its units.
        mine = member_scores[np.where(idx >= 0, idx, 0)]
        scores = _standardise(scores) + _standardise(mine)
        order = np.argsort(-scores, kind="stable")
        idx, scores = idx[order], scores[order]
    return _filter_list(idx, scores, Reason.BASKET_COMPLEMENT, categories, filters, basket_idx[basket_idx >= 0])


def _standardise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    std = float(x.std())
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def stock_reason(channel: Channel) -> Reason:
    return Reason.IN_STOCK_AT_STORE if channel.is_physical else Reason.IN_STOCK_ONLINE
