"""Known, cold and anonymous members are told apart in one place, which decides the feature-store reads."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pytest
from test_ranking import CATS, ITEMS, TinyBundle

from omnirec.domain.errors import Unavailable
from omnirec.domain.idmap import IdMap
from omnirec.domain.member_lists import MemberLists, TopList
from omnirec.domain.profile import ColdStartProfile
from omnirec.domain.vocab import Channel, Intent
from omnirec.recommendations import engine
from omnirec.recommendations.engine import MemberRead, Request, for_member, member_read
from omnirec.recommendations.ranking import Filters, MemberContext, Reason


@dataclass
class FakeSource:
    """Records every read; `down` makes each one raise `Unavailable` as a dead Redis would."""

    down: bool = False
    calls: list[str] = field(default_factory=list)
    lists: MemberLists | None = None
    """What the store holds for m1 (member state in the store)."""
    others: MemberLists | None = None
    """What it holds for any other member (materialisation writes an empty entry for those the bundle does not
    know; None: the entry is missing)."""

    def _read(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise Unavailable("feature store did not answer within 50 ms")

    async def member(self, member_id: str | None, anonymous_id: str | None, budget_s: float,
                     top_lists: bool = False) -> MemberContext:
        self._read("member+lists" if top_lists else "member")
        lists = (self.lists if member_id == "m1" else self.others) if top_lists else None
        purchased = {"i1": 0.0} if member_id == "m1" else {"i0": 0.0}  # m1's as `purchased` reads them
        return MemberContext(member_id or "linked", ColdStartProfile(tier="gold"), purchased=purchased, lists=lists)

    async def purchased(self, member_id: str, budget_s: float) -> MemberContext:
        self._read("purchased")
        return MemberContext(member_id, purchased={"i1": 0.0})

    async def in_stock(self, item_ids: list[str], store_id: str | None, budget_s: float) -> np.ndarray:
        self._read("in_stock")
        return np.array([i != "i3" for i in item_ids])


def ask(source: FakeSource, member_id: str | None, filters: Filters | None = None, anonymous_id: str | None = None,
        channel: Channel = Channel.APP, bundle: TinyBundle | None = None) -> engine.Answer:
    request = Request(channel, "s1" if channel.is_physical else None, 3, filters or Filters())
    return asyncio.run(for_member(source, bundle or TinyBundle(), CATS, member_id, anonymous_id, request,
                                  lambda: 0.05))


@pytest.mark.parametrize(("member_id", "filters", "read"), [
    ("m1", Filters(), MemberRead.NONE),
    ("m1", Filters(exclude_purchased=True), MemberRead.PURCHASES),
    ("new", Filters(), MemberRead.PROFILE),
    (None, Filters(exclude_purchased=True), MemberRead.PROFILE),
])
def test_the_read_follows_what_the_model_knows(member_id: str | None, filters: Filters, read: MemberRead) -> None:
    assert member_read(TinyBundle(), member_id, filters) is read


def test_known_member_without_purchase_filter_reads_nothing() -> None:
    source = FakeSource()
    answer = ask(source, "m1")
    assert source.calls == [] and answer.ranked.reasons == [Reason.COLLABORATIVE] * 3 and not answer.degraded


def test_known_member_with_purchase_filter_reads_only_purchases() -> None:
    source = FakeSource()
    answer = ask(source, "m1", Filters(exclude_purchased=True))
    assert source.calls == ["purchased"] and "i1" not in answer.item_ids
    assert answer.ranked.applied == [Reason.EXCLUDED_PURCHASED]


def test_cold_and_anonymous_members_read_the_profile() -> None:
    source = FakeSource()
    cold = ask(source, "new")
    assert source.calls == ["member"] and cold.ranked.reasons == [Reason.CONTENT_COLD_START] * 3
    linked = ask(FakeSource(), None, anonymous_id="device-1")
    assert linked.member_id == "linked"


def test_a_dead_feature_store_degrades_instead_of_failing() -> None:
    answer = ask(FakeSource(down=True), "m1", Filters(exclude_purchased=True, in_stock_only=True))
    assert answer.ranked.reasons == [Reason.COLLABORATIVE] * 3 and len(answer.degraded) == 2
    assert Reason.EXCLUDED_PURCHASED not in answer.ranked.applied
    cold = ask(FakeSource(down=True), "new")
    assert cold.ranked.reasons[0] is Reason.POPULAR_IN_CHANNEL and cold.degraded


def test_stock_is_checked_at_the_store_on_physical_channels() -> None:
    answer = ask(FakeSource(), "m1", Filters(in_stock_only=True), channel=Channel.POS)
    assert "i3" not in answer.item_ids and ITEMS.to_external(answer.ranked.idx).tolist() == answer.item_ids
    assert answer.ranked.applied == [Reason.IN_STOCK_AT_STORE]


HELD = TinyBundle(top=(np.array([1, 3, 2, 5, 4, 0]), np.array([0.9, 0.8, 0.5, 0.3, 0.2, 0.1], np.float32)))
LEAN = TinyBundle(members=IdMap.from_ids([]), members_in_store=True)
"""The same model, its member state held by the replica, then in the feature store (no member ids at all)."""


def _stored(version: int = 1) -> MemberLists:
    assert HELD.top is not None
    return MemberLists(version, TopList(HELD.top[0].astype(np.int32), HELD.top[1]), {})


@pytest.mark.parametrize("filters", [Filters(), Filters(exclude_purchased=True), Filters(in_stock_only=True),
                                     Filters(exclude_purchased=True, in_stock_only=True)])
def test_store_held_lists_answer_as_the_bundle_held_ones_in_one_read(filters: Filters) -> None:
    held_source, store_source = FakeSource(), FakeSource(lists=_stored())
    held = ask(held_source, "m1", filters, bundle=HELD)
    stored = ask(store_source, "m1", filters, bundle=LEAN)
    assert stored.item_ids == held.item_ids and stored.ranked.reasons == held.ranked.reasons
    assert stored.ranked.applied == held.ranked.applied and not stored.degraded
    # One member read (profile, purchases and lists together) where the held bundle made one or none.
    assert store_source.calls == ["member+lists"] + [c for c in held_source.calls if c == "in_stock"]


def test_member_read_is_lists_for_everyone_when_member_state_is_in_the_store() -> None:
    assert {member_read(LEAN, m, Filters()) for m in ("m1", "new", None)} == {MemberRead.LISTS}


def test_lists_of_another_bundle_version_degrade_to_the_profile() -> None:
    answer = ask(FakeSource(lists=_stored(version=7)), "m1", bundle=LEAN)
    assert answer.ranked.reasons == [Reason.CONTENT_COLD_START] * 3
    assert len(answer.degraded) == 1 and "bundle v7, serving v1" in answer.degraded[0]


def test_a_member_without_stored_lists_is_a_cold_start_and_a_dead_store_degrades() -> None:
    cold = ask(FakeSource(others=MemberLists(1, None, {})), "new", bundle=LEAN)
    assert cold.ranked.reasons == [Reason.CONTENT_COLD_START] * 3 and not cold.degraded
    missing = ask(FakeSource(), "new", bundle=LEAN)  # a profile but no entry: a known member's lists are lost
    assert missing.ranked.reasons == [Reason.CONTENT_COLD_START] * 3
    assert len(missing.degraded) == 1 and missing.degraded[0].startswith("member lists missing from the feature store")
    dead = ask(FakeSource(down=True, lists=_stored()), "m1", bundle=LEAN)
    assert dead.ranked.reasons[0] is Reason.POPULAR_IN_CHANNEL and dead.degraded


INTENT_LISTS = {Intent.MIXED: (np.array([2, 0, 5, 1]), np.array([0.9, 0.8, 0.7, 0.6], np.float32)),
                Intent.BUY_AGAIN: (np.array([1, 3]), np.array([2.0, 1.0], np.float32)),
                Intent.DISCOVER: (np.array([4, 5, 2, 0]), np.array([0.5, 0.4, 0.3, 0.2], np.float32))}


@pytest.mark.parametrize("intent", list(Intent))
@pytest.mark.parametrize("filters", [Filters(), Filters(in_stock_only=True)])
def test_store_held_intent_lists_answer_as_the_bundle_held_ones(intent: Intent, filters: Filters) -> None:
    """The next-basket lists too: the same list, the same live purchases applied (m1 bought i1 at t=0)."""
    assert HELD.top is not None
    held = TinyBundle(top=HELD.top, lists=INTENT_LISTS)
    stored = MemberLists(1, TopList(HELD.top[0].astype(np.int32), HELD.top[1]),
                         {i: TopList(items.astype(np.int32), scores) for i, (items, scores) in INTENT_LISTS.items()})
    request = Request(Channel.APP, None, 3, filters, intent=intent, now=86_400.0)

    def answer(bundle: TinyBundle, source: FakeSource) -> engine.Answer:
        return asyncio.run(for_member(source, bundle, CATS, "m1", None, request, lambda: 0.05))

    store_source = FakeSource(lists=stored)
    want, got = answer(held, FakeSource()), answer(LEAN, store_source)
    assert {Reason.NEXT_BASKET, Reason.BUY_AGAIN, Reason.DISCOVER} & set(want.ranked.reasons)  # the lists served
    assert got.item_ids == want.item_ids and got.ranked.reasons == want.ranked.reasons
    assert got.ranked.applied == want.ranked.applied and got.degraded == want.degraded
    assert store_source.calls[0] == "member+lists" and "purchased" not in store_source.calls
