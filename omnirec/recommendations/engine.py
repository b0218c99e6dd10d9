"""One recommendation request from ids to answer: which member reads to make, ranking, the stock check.

Known, cold and anonymous members are told apart here, once (as RecTools' `ModelBase.recommend` splits
hot, warm and cold users): a member the model knows is scored by the model and needs at most their
purchases from the feature store; anyone else needs their profile for the content model, or gets
popularity. When member state is in the feature store (`Bundle.members_in_store`) the replica cannot tell
them apart: every request reads the profile, purchases and the member's stored lists in one round trip.
A feature store that cannot answer in time makes the answer degraded, never failed. The servicer only
turns protos into these calls and `Answer`s back into protos.

The request's `Intent` picks the list: a member with precomputed lists (`Bundle.intent_top`, or the
feature store's copy when member state is there) gets their list corrected by the purchases made since
(`intents.from_lists`, one purchased-list read); anyone else gets `BUY_AGAIN` from their purchases, most due
first, `DISCOVER` as today's answer without bought items, and `MIXED` as today's answer (unchanged for
callers that do not set an intent).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol

import numpy as np

from omnirec.domain.errors import InvalidArgument, Unavailable
from omnirec.domain.vocab import AnonymousId, Channel, Intent, ItemId, MemberId, StoreId
from omnirec.recommendations import intents
from omnirec.recommendations.ranking import (
    Bundle,
    CategoryIndex,
    Filters,
    MemberContext,
    Ranked,
    basket,
    overfetch,
    recommend,
    similar,
    stock_reason,
)

TimeBudget = Callable[[], float]
"""Seconds the next feature-store read may take (what is left of the caller's deadline, bounded)."""


class MemberSource(Protocol):
    """The feature-store reads a request may make; each raises `Unavailable` when it cannot answer in time."""

    async def member(self, member_id: MemberId | None, anonymous_id: AnonymousId | None,
                     budget_s: float, top_lists: bool = False) -> MemberContext: ...
    async def purchased(self, member_id: MemberId, budget_s: float) -> MemberContext: ...
    async def in_stock(self, item_ids: list[ItemId], store_id: StoreId | None, budget_s: float) -> np.ndarray: ...


class MemberRead(Enum):
    """What the feature store must supply about the caller."""

    NONE = "none"
    """A member the model knows, without the purchase filter: the model alone answers."""
    PURCHASES = "purchases"
    """A member the model knows, with the purchase filter: only their purchased list."""
    PROFILE = "profile"
    """Anyone else: profile (cold start) and purchases, the anonymous id resolved to a member when linked."""
    LISTS = "lists"
    """Member state in the feature store: as `PROFILE`, plus the member's precomputed lists, one round trip."""


def member_read(bundle: Bundle, member_id: MemberId | None, filters: Filters,
                intent: Intent = Intent.MIXED, has_lists: bool = False) -> MemberRead:
    """Buy-again and discover need the member's purchases, and so does a precomputed list (to apply the
    purchases made since); today's MIXED answer needs them only for the purchase filter."""
    if bundle.members_in_store:
        return MemberRead.LISTS
    if member_id and member_id in bundle.members:
        needs = filters.exclude_purchased or has_lists or intent is not Intent.MIXED
        return MemberRead.PURCHASES if needs else MemberRead.NONE
    return MemberRead.PROFILE


@dataclass(frozen=True)
class Request:
    """Request the answer is shown: the channel, and the store for physical channels."""

    channel: Channel
    store_id: StoreId | None
    k: int
    filters: Filters
    intent: Intent = Intent.MIXED
    now: float = field(default_factory=time.time)
    """Unix seconds the request is answered at: how due a purchase is depends on it."""


@dataclass(frozen=True)
class Answer:
    ranked: Ranked
    """At most k items, best first, with their reasons and the filters applied."""
    item_ids: list[ItemId]
    member_id: MemberId | None = None
    """The member the answer is for (resolved from an anonymous id when linked)."""
    degraded: tuple[str, ...] = ()
    """Why the answer is less than it should be (a feature-store read that did not answer in time)."""
    empty_reason: str = ""
    """Why an answer holds no item ("" when it holds some)."""


async def _member(source: MemberSource, bundle: Bundle, member_id: MemberId | None,
                  anonymous_id: AnonymousId | None, filters: Filters, budget: TimeBudget,
                  read: MemberRead) -> tuple[MemberContext, Filters, list[str]]:
    try:
        if read is MemberRead.NONE:
            return MemberContext(member_id=member_id), filters, []
        if read is MemberRead.PURCHASES and member_id:
            return await source.purchased(member_id, budget()), filters, []
        if read is MemberRead.LISTS:
            return _matching_lists(bundle, await source.member(member_id, anonymous_id, budget(), top_lists=True),
                                   filters)
        return await source.member(member_id, anonymous_id, budget()), filters, []
    except Unavailable as exc:
        return (MemberContext(member_id=member_id), replace(filters, exclude_purchased=False),
                [f"member features unavailable (purchases not excluded): {exc}"])


def _matching_lists(bundle: Bundle, member: MemberContext,
                    filters: Filters) -> tuple[MemberContext, Filters, list[str]]:
    """Stored lists from another bundle version hold positions in another item order: dropped, degraded.
    A member with a profile but no entry at all is one the bundle knows (materialisation gives every other
    profiled member an empty entry) whose lists were not loaded or were evicted: degraded, not a cold start."""
    if member.lists is None:
        if member.profile is None:
            return member, filters, []
        return (member, filters,
                ["member lists missing from the feature store (materialisation incomplete or evicted; run `omnirec "
                 "materialize`): content answer"])
    if member.lists.bundle_version == bundle.version:
        return member, filters, []
    stale = member.lists.bundle_version
    return (replace(member, lists=None), filters,
            [f"member lists in the feature store are from bundle v{stale}, serving v{bundle.version} (run "
             "`omnirec materialize` after `omnirec publish`): content or popularity answer"])


async def _finish(source: MemberSource, bundle: Bundle, categories: CategoryIndex, ranked: Ranked, request: Request,
                  budget: TimeBudget, degraded: list[str], member_id: MemberId | None = None,
                  nothing: str = "") -> Answer:
    """The first k candidates, in stock at the store (physical channels) or online when asked.

    Stock lives in the feature store: if it cannot be read in time the list goes out unchecked, degraded.
    """
    candidates = len(ranked.idx)
    if request.filters.in_stock_only:
        ids = bundle.items.to_external(ranked.idx).tolist()
        store = request.store_id if request.channel.is_physical else None
        try:
            stocked = await source.in_stock(ids, store, budget())
            ranked = ranked.take(stocked, request.k, stock_reason(request.channel))
        except Unavailable as exc:
            degraded.append(f"stock not checked: {exc}")
    ranked = ranked.head(request.k)
    empty = "" if len(ranked.idx) else empty_reason(categories, request, candidates, nothing)
    return Answer(ranked, bundle.items.to_external(ranked.idx).tolist(), member_id, tuple(degraded), empty)


def empty_reason(categories: CategoryIndex, request: Request, candidates: int, nothing: str = "") -> str:
    """Why an answer is empty, from the filter that emptied it; `nothing`: why there was no candidate
    before any filter (a buy-again answer for a member with nothing due)."""
    category = request.filters.category
    if category and not categories.mask(category).any():
        return f"category {category!r} has no items in the catalogue"
    if nothing:
        return nothing
    if candidates and request.filters.in_stock_only:
        where = f"at store {request.store_id!r}" if request.channel.is_physical else "online"
        return (f"none of the {candidates} best candidates is in stock {where} (an unknown store, or no "
                "stock loaded for it)")
    scope = f"in category {category!r} " if category else ""
    return (f"every candidate {scope}was filtered out (already purchased, the item itself or the basket, or "
            "the never-recommend list)")


async def for_member(source: MemberSource, bundle: Bundle, categories: CategoryIndex, member_id: MemberId | None,
                     anonymous_id: AnonymousId | None, request: Request, budget: TimeBudget) -> Answer:
    """Personal recommendations for the request's intent: the member's precomputed list with live purchases
    applied when the model has one; else collaborative for a known member, content for a cold one, else
    popular (DISCOVER without bought items, BUY_AGAIN from the member's purchases)."""
    intent = request.intent
    if intent is Intent.BUY_AGAIN and request.filters.exclude_purchased:
        raise InvalidArgument("exclude_purchased", "cannot be set with INTENT_BUY_AGAIN, which lists bought items")
    n = overfetch(request.k, request.filters)
    lists = bundle.intent_top(member_id, intent, n) if member_id else None
    read = member_read(bundle, member_id, request.filters, intent, lists is not None)
    member, filters, degraded = await _member(source, bundle, member_id, anonymous_id, request.filters, budget, read)
    stored = member.lists.intents.get(intent) if member.lists is not None else None
    if lists is None and stored is not None:
        lists = stored.head(n)
    if intent is Intent.DISCOVER and not degraded and not filters.exclude_purchased:
        filters = replace(filters, exclude_purchased=True)
    if filters is not request.filters:  # `dataclasses.replace` costs more than the rest of this function
        request = replace(request, filters=filters)
    ranked, not_due = None, np.zeros(0, np.int64)
    if lists is not None:
        if degraded:
            degraded.append("purchases since the lists were computed not applied")
        ranked, not_due = intents.from_lists(bundle, categories, member, intent, lists, filters, request.now, n)
        if len(ranked.idx) >= n:
            return await _finish(source, bundle, categories, ranked, request, budget, degraded, member.member_id)
    nothing = ""
    if intent is Intent.BUY_AGAIN:
        fallback = intents.buy_again(bundle, categories, member, filters, request.now)
        nothing = "" if len(fallback.idx) or degraded else intents.nothing_due(member)
    else:
        fallback = recommend(bundle, categories, member, request.channel, request.store_id, n, filters)
    ranked = fallback if ranked is None else intents.merge(ranked, fallback, n, not_due)
    return await _finish(source, bundle, categories, ranked, request, budget, degraded, member.member_id, nothing)


async def similar_to(source: MemberSource, bundle: Bundle, categories: CategoryIndex, item_id: ItemId,
                     request: Request, budget: TimeBudget) -> Answer:
    ranked = similar(bundle, categories, item_id, overfetch(request.k, request.filters), request.filters)
    return await _finish(source, bundle, categories, ranked, request, budget, [])


async def for_basket(source: MemberSource, bundle: Bundle, categories: CategoryIndex, item_ids: list[ItemId],
                     member_id: MemberId | None, request: Request, budget: TimeBudget) -> Answer:
    """Complements of the basket, re-ranked by the member's taste when the model knows them."""
    taste = bundle.member_scores(member_id) if member_id else None
    ranked = basket(bundle, categories, item_ids, taste, overfetch(request.k, request.filters), request.filters)
    return await _finish(source, bundle, categories, ranked, request, budget, [])
