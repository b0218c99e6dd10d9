"""Buy-again, discover and the next-basket list on the tiny bundle: precomputed lists with live purchases
applied, and the answers for members without lists."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pytest
from test_ranking import CATS, TinyBundle

from omnirec.domain.clock import DAY
from omnirec.domain.errors import InvalidArgument, Unavailable
from omnirec.domain.profile import ColdStartProfile
from omnirec.domain.vocab import Channel, Intent
from omnirec.recommendations import engine
from omnirec.recommendations.engine import Request, for_member
from omnirec.recommendations.ranking import Filters, MemberContext, Reason

NOW = 1_800_000_000.0
CYCLES = np.array([7.0, 30.0, 2.0, np.nan, 14.0, 60.0])
"""i3 has no cycle of its own: the bundle's median stands in (as `ModelBundle.cycle_days` does)."""


def cycles_with_median() -> np.ndarray:
    return np.where(np.isnan(CYCLES), np.nanmedian(CYCLES), CYCLES)


@dataclass
class Source:
    """A feature store holding one member's purchases (item -> seconds of the last purchase)."""

    bought: dict[str, float] = field(default_factory=dict)
    down: bool = False
    calls: list[str] = field(default_factory=list)

    def _read(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise Unavailable("feature store did not answer within 50 ms")

    async def member(self, member_id: str | None, anonymous_id: str | None, budget_s: float) -> MemberContext:
        self._read("member")
        if member_id is None:
            return MemberContext(None)
        return MemberContext(member_id, ColdStartProfile(tier="gold"), purchased=self.bought)

    async def purchased(self, member_id: str, budget_s: float) -> MemberContext:
        self._read("purchased")
        return MemberContext(member_id, purchased=self.bought)

    async def in_stock(self, item_ids: list[str], store_id: str | None, budget_s: float) -> np.ndarray:
        self._read("in_stock")
        return np.ones(len(item_ids), bool)


def ago(days: float) -> float:
    return NOW - days * DAY


def ask(source: Source, bundle: TinyBundle, intent: Intent | None, member_id: str | None = "m1", k: int = 3,
        filters: Filters | None = None) -> engine.Answer:
    request = Request(Channel.APP, None, k, filters or Filters(), now=NOW)
    if intent is not None:
        request = Request(Channel.APP, None, k, filters or Filters(), intent=intent, now=NOW)
    return asyncio.run(for_member(source, bundle, CATS, member_id, None, request, lambda: 0.05))


def bundle(lists: dict[Intent, list[int]] | None = None, cycles: np.ndarray | None = None,
           as_of: float | None = ago(1)) -> TinyBundle:
    made = {intent: (np.array(idx, np.int64), np.linspace(1.0, 0.5, len(idx)).astype(np.float32))
            for intent, idx in (lists or {}).items()}
    return TinyBundle(lists=made, cycles=cycles_with_median() if cycles is None else cycles,
                      lists_as_of=as_of if lists else None)


def test_buy_again_without_lists_orders_by_how_due_and_drops_what_was_just_bought() -> None:
    source = Source({"i4": NOW - 60, "i0": ago(14), "i2": ago(10), "i1": ago(15), "i5": ago(20)})
    answer = ask(source, bundle(), Intent.BUY_AGAIN, k=10)
    # cycles elapsed: i2 10/2 = 5, i0 14/7 = 2, i1 15/30 = 0.5; i5 20/60 and i4 (a minute of 14 days) not due
    assert answer.item_ids == ["i2", "i0", "i1"] and answer.ranked.reasons == [Reason.BUY_AGAIN] * 3
    assert list(answer.ranked.scores) == pytest.approx([5.0, 2.0, 0.5])
    assert all(type(r) is Reason for r in answer.ranked.reasons)
    assert source.calls == ["purchased"]


def test_buy_again_without_cycles_orders_by_recency() -> None:
    source = Source({"i4": NOW - 60, "i0": ago(14), "i2": ago(10)})
    answer = ask(source, bundle(cycles=np.full(6, np.nan)), Intent.BUY_AGAIN)
    assert answer.item_ids == ["i4", "i2", "i0"]


@pytest.mark.parametrize(("member_id", "purchased", "why"), [
    ("m1", {}, "no purchases in the feature store"),
    ("m1", {"i4": NOW - 60}, "none of the member's 1 purchased items is due again yet"),
    ("cold", {}, "no purchases in the feature store"),
    (None, {}, "anonymous visitor not linked"),
])
def test_buy_again_says_why_it_is_empty(member_id: str | None, purchased: dict[str, float], why: str) -> None:
    answer = ask(Source(purchased), bundle(), Intent.BUY_AGAIN, member_id=member_id)
    assert answer.item_ids == [] and why in answer.empty_reason


def test_cold_member_buy_again_and_discover_come_from_the_profile_read() -> None:
    source = Source({"i0": ago(14), "i5": ago(90)})
    again = ask(source, bundle(), Intent.BUY_AGAIN, member_id="cold")
    assert again.item_ids == ["i0", "i5"] and source.calls == ["member"]
    discover = ask(Source({"i0": ago(14), "i5": ago(90)}), bundle(), Intent.DISCOVER, member_id="cold")
    # the content model ranks i0 first and i5 second: both bought, so left out
    assert discover.item_ids == ["i4", "i3", "i2"]
    assert discover.ranked.reasons == [Reason.CONTENT_COLD_START] * 3
    assert Reason.EXCLUDED_PURCHASED in discover.ranked.applied


def test_discover_without_lists_is_todays_answer_without_bought_items() -> None:
    source = Source({"i1": ago(3), "i3": ago(400)})
    answer = ask(source, bundle(), Intent.DISCOVER)
    assert answer.item_ids == ["i2", "i5", "i4"] and answer.ranked.reasons == [Reason.COLLABORATIVE] * 3
    assert answer.ranked.applied == [Reason.EXCLUDED_PURCHASED]


@pytest.mark.parametrize("intent", [None, Intent.MIXED])
def test_mixed_without_lists_is_todays_answer_and_reads_nothing(intent: Intent | None) -> None:
    source = Source({"i1": ago(3)})
    answer = ask(source, bundle(), intent)
    assert answer.item_ids == ["i1", "i3", "i2"] and answer.ranked.reasons == [Reason.COLLABORATIVE] * 3
    assert source.calls == []


def test_buy_again_list_drops_an_item_bought_since_and_demotes_one_not_a_full_cycle_ago() -> None:
    lists = {Intent.BUY_AGAIN: [0, 1, 4, 2]}
    # i0: a minute ago, cycle 7 days: out. i4: 10 of 14 days ago but after the lists: to the end.
    # i1: bought before the lists were made: the ranker saw it, nothing changes.
    source = Source({"i0": NOW - 60, "i4": ago(10), "i1": ago(25)})
    answer = ask(source, bundle(lists, as_of=ago(20)), Intent.BUY_AGAIN, k=4)
    assert answer.item_ids[:3] == ["i1", "i2", "i4"] and "i0" not in answer.item_ids
    assert answer.ranked.reasons[:3] == [Reason.BUY_AGAIN] * 3
    assert list(answer.ranked.scores) == sorted(answer.ranked.scores, reverse=True)
    assert source.calls == ["purchased"]


def test_discover_list_never_holds_a_bought_item_and_moves_toward_new_purchases() -> None:
    lists = {Intent.DISCOVER: [1, 2, 4]}
    before = ask(Source({"i2": ago(400)}), bundle(lists), Intent.DISCOVER, k=6)
    assert before.item_ids[:2] == ["i1", "i4"] and before.ranked.reasons[:2] == [Reason.DISCOVER] * 2
    assert "i2" not in before.item_ids
    # i3 bought a minute ago: its complements (i0, i5, i2, i1 in the tiny bundle) join the list
    after = ask(Source({"i2": ago(400), "i3": NOW - 60}), bundle(lists), Intent.DISCOVER, k=6)
    assert "i2" not in after.item_ids and "i3" not in after.item_ids
    assert after.item_ids[0] == "i1"  # on the list and a complement: fused scores add up
    assert all(type(r) is Reason for r in after.ranked.reasons)
    complements = [i for i, r in zip(after.item_ids, after.ranked.reasons, strict=True)
                   if r is Reason.BASKET_COMPLEMENT]
    assert complements[:2] == ["i0", "i5"]
    assert after.item_ids.index("i0") < after.item_ids.index("i4") or after.ranked.reasons[1] is Reason.DISCOVER


def test_mixed_list_is_the_rankers_and_applies_live_purchases() -> None:
    lists = {Intent.MIXED: [5, 0, 3]}
    plain = ask(Source({}), bundle(lists), None)
    assert plain.item_ids == ["i5", "i0", "i3"] and plain.ranked.reasons == [Reason.NEXT_BASKET] * 3
    bought = ask(Source({"i5": NOW - 60}), bundle(lists), Intent.MIXED, k=6)
    assert "i5" not in bought.item_ids and bought.item_ids[0] == "i0"


def test_a_short_list_is_topped_up_from_the_answer_without_lists() -> None:
    lists = {Intent.DISCOVER: [4]}
    answer = ask(Source({"i1": ago(3)}), bundle(lists), Intent.DISCOVER, k=3)
    assert answer.item_ids == ["i4", "i3", "i2"]
    assert answer.ranked.reasons == [Reason.DISCOVER, Reason.COLLABORATIVE, Reason.COLLABORATIVE]
    assert list(answer.ranked.scores) == sorted(answer.ranked.scores, reverse=True)
    assert answer.ranked.applied == [Reason.EXCLUDED_PURCHASED]


def test_a_dead_feature_store_serves_the_lists_as_computed_degraded() -> None:
    lists = {Intent.BUY_AGAIN: [0, 1, 2]}
    answer = ask(Source({"i0": NOW - 60}, down=True), bundle(lists), Intent.BUY_AGAIN)
    assert answer.item_ids == ["i0", "i1", "i2"] and answer.degraded
    assert "purchases since the lists were computed not applied" in "; ".join(answer.degraded)
    empty = ask(Source({"i0": ago(10)}, down=True), bundle(), Intent.BUY_AGAIN)
    assert empty.item_ids == [] and empty.degraded and empty.empty_reason


def test_buy_again_with_the_purchase_filter_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="exclude_purchased"):
        ask(Source({}), bundle(), Intent.BUY_AGAIN, filters=Filters(exclude_purchased=True))


def test_intent_lists_respect_the_category_filter() -> None:
    lists = {Intent.BUY_AGAIN: [0, 1, 3, 2]}
    source = Source({"i0": ago(30), "i3": ago(40), "i2": ago(30)})
    answer = ask(source, bundle(lists), Intent.BUY_AGAIN, filters=Filters(category="home/kitchen"))
    assert answer.item_ids == ["i0", "i3"] and Reason.CATEGORY_FILTER in answer.ranked.applied
