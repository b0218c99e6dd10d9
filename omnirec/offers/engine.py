"""The offers engine: NextBestOffer, DecideCoupon and RedeemCoupon in domain terms (no grpc).

It reads everything one request needs (profile, contacts, budgets) up front, runs the pure pipeline in
`offers.policy`, commits state through `offers.budget.OfferStore` and appends the decision to the
decision log. The servicer only converts protos.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa

from omnirec.domain.errors import FailedPrecondition, NotFound
from omnirec.domain.idmap import IdMap
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import ONLINE_STORE, Channel
from omnirec.offers.catalogue import Catalogue, CatalogueSource, Offer, Target
from omnirec.offers.config import OfferConfig
from omnirec.offers.decision_log import DecisionLog, DecisionRecord, RecordType
from omnirec.offers.policy import (
    NEUTRAL_AFFINITY,
    Exclusion,
    MemberView,
    OfferState,
    Ranking,
    Rule,
    ScoredOffer,
    UpliftEstimate,
    rank_offers,
)
from omnirec.offers.store import DAY, OfferStore, budget_left
from omnirec.offers.uplift import UpliftScores

ISSUED = "issued"
COUPON_RULES = (Rule.NOT_VALID_NOW, Rule.WRONG_CHANNEL, Rule.OUT_OF_STOCK, Rule.NO_CONSENT, Rule.NOT_ELIGIBLE_TIER,
                Rule.NOT_ELIGIBLE_LIFECYCLE, Rule.HOLDOUT, Rule.CAP_REACHED, Rule.FATIGUE_CAP, Rule.BUDGET_EXHAUSTED,
                Rule.NOT_WORTH_IT)
"""Exclusion rules in pipeline order: when no coupon is issued, the reason is the rule that stopped the
candidate which got furthest (a member in the holdout is told `holdout`, not `not_eligible_tier`)."""


class AffinityModel(Protocol):
    """What the engine needs from a model bundle (`bundle.ModelBundle` provides it)."""

    items: IdMap

    def member_scores(self, member_id: str) -> np.ndarray | None: ...


ModelSource = Callable[[], tuple[AffinityModel | None, str]]
"""The model serving now and its version (the service's bundle changes on hot reload)."""


class ItemCatalogue:
    """Item ids with category and brand, to resolve an offer's target to items; plus stock per store."""

    def __init__(self, items: pa.Table, inventory: pa.Table | None = None) -> None:
        self.ids = IdMap.from_ids(items["item_id"].to_numpy(zero_copy_only=False))
        self.category = items["category"].to_numpy(zero_copy_only=False).astype(str)
        self.brand = items["brand"].to_numpy(zero_copy_only=False).astype(str)
        self._stock: dict[str, np.ndarray] = {}
        if inventory is not None:
            stores = inventory["store_id"].to_numpy(zero_copy_only=False).astype(str)
            idx = self.ids.to_internal(inventory["item_id"].to_numpy(zero_copy_only=False), strict=False)
            qty = inventory["quantity"].to_numpy()
            for store in np.unique(stores):
                rows = (stores == store) & (idx >= 0) & (qty > 0)
                flags = np.zeros(len(self.ids), bool)
                flags[idx[rows]] = True
                self._stock[str(store)] = flags
        self._targets: dict[str, np.ndarray] = {}

    def target_items(self, target: Target) -> np.ndarray:
        """Internal indexes of the items a target covers (empty for a whole-basket target)."""
        cached = self._targets.get(target.key)
        if cached is None:
            if target.scope == "items":
                cached = self.ids.to_internal(target.ids, strict=False)
                cached = cached[cached >= 0]
            elif target.scope == "categories":
                cached = np.flatnonzero(np.isin(self.category, target.ids))
            elif target.scope == "brands":
                cached = np.flatnonzero(np.isin(self.brand, target.ids))
            else:
                cached = np.zeros(0, np.int64)
            self._targets[target.key] = cached
        return cached

    def in_stock(self, target: Target, store_id: str) -> bool:
        """A basket offer is always sellable; otherwise some target item must be in stock where the member is."""
        if target.scope == "basket" or not self._stock:
            return True
        flags = self._stock.get(store_id)
        return flags is not None and bool(flags[self.target_items(target)].any())


def affinity(scores: np.ndarray, targets: np.ndarray) -> float:
    """Quantile of the member's best-scored target item among all their item scores, in [0, 1]."""
    if len(targets) == 0:
        return NEUTRAL_AFFINITY
    return float((scores < scores[targets].max()).mean())


@dataclass(frozen=True)
class NextBestOffers:
    decision_id: str
    ranking: Ranking
    catalogue_version: str
    model_version: str
    degraded: bool
    """No model was serving, so every affinity was neutral."""


@dataclass(frozen=True)
class CouponDecision:
    decision_id: str
    issued: bool
    coupon_id: str
    offer_id: str
    reason: str
    """`issued` or the `policy.Rule` that stopped the coupon; `no_eligible_offer` when nothing applied."""
    detail: str
    score: float
    replayed: bool = False

    def to_json(self) -> dict[str, object]:
        return {"decision_id": self.decision_id, "issued": self.issued, "coupon_id": self.coupon_id,
                "offer_id": self.offer_id, "reason": self.reason, "detail": self.detail, "score": self.score}

    @classmethod
    def from_json(cls, data: dict[str, object], replayed: bool) -> CouponDecision:
        return cls(**data, replayed=replayed)  # type: ignore[arg-type]


NO_ELIGIBLE_OFFER = "no_eligible_offer"


class OfferEngine:
    def __init__(self, config: OfferConfig, catalogue: CatalogueSource, store: OfferStore,
                 profiles: Callable[[str], MemberView | None], items: ItemCatalogue, log: DecisionLog,
                 tiers: TierLadder | None = None, model: ModelSource | None = None,
                 uplift: UpliftScores | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.catalogue = catalogue
        self.store = store
        self.profiles = profiles
        self.items = items
        self.log = log
        self.tiers = tiers or TierLadder()
        self.model = model or (lambda: (None, ""))
        self.uplift = uplift
        self.clock = clock
        self._model_targets: tuple[str, dict[str, np.ndarray]] = ("", {})
        """Target -> the serving model's item indexes, for one model version (mapping ids per request is slow)."""

    def _member(self, member_id: str) -> MemberView:
        member = self.profiles(member_id)
        if member is None:
            raise NotFound(f"member_id: unknown member {member_id!r}")
        return member

    def _states(self, offers: Sequence[Offer], member_id: str, channel: Channel, store_id: str | None,
                now: float, model: AffinityModel | None, model_version: str) -> tuple[dict[str, OfferState], int]:
        """Per-offer state and the member's contacts on `channel` within the fatigue period."""
        fatigue = self.config.fatigue.get(channel)
        periods = [o.per_member_cap.period_days for o in offers if o.per_member_cap]
        horizon = max([*periods, fatigue.period_days if fatigue else 0.0, 1.0])
        contacts, usages = self.store.read(member_id, offers, now - horizon * DAY)
        scores = model.member_scores(member_id) if model is not None else None
        where = store_id if channel.is_physical and store_id else ONLINE_STORE
        states = {}
        for offer, usage in zip(offers, usages, strict=True):
            cap = offer.per_member_cap
            states[offer.id] = OfferState(
                member_contacts=contacts.count(now - cap.period_days * DAY, offer_id=offer.id) if cap else 0,
                budget_left=budget_left(offer, usage),
                target_in_stock=self.items.in_stock(offer.target, where),
                affinity=self._affinity(model, model_version, scores, offer.target),
            )
        channel_contacts = contacts.count(now - fatigue.period_days * DAY, channel=channel) if fatigue else 0
        return states, channel_contacts

    def _affinity(self, model: AffinityModel | None, model_version: str, scores: np.ndarray | None,
                  target: Target) -> float:
        if model is None or scores is None or target.scope == "basket":
            return NEUTRAL_AFFINITY
        version, cache = self._model_targets
        if version != model_version:
            cache = {}
            self._model_targets = (model_version, cache)
        idx = cache.get(target.key)
        if idx is None:
            idx = model.items.to_internal(self.items.ids.to_external(self.items.target_items(target)), strict=False)
            idx = cache[target.key] = idx[idx >= 0]
        return affinity(scores, idx)

    def _uplift(self, member_id: str) -> UpliftEstimate | None:
        return self.uplift.get(member_id) if self.uplift is not None else None

    def _rank(self, offers: Sequence[Offer], member: MemberView, channel: Channel, store_id: str | None, k: int,
              now: float, model: AffinityModel | None, model_version: str) -> Ranking:
        states, channel_contacts = self._states(offers, member.member_id, channel, store_id, now, model,
                                                model_version)
        return rank_offers(offers, member, channel, now, states, self.tiers, k, channel_contacts,
                           self.config.fatigue.get(channel), self._uplift(member.member_id))

    def _versions(self, catalogue: Catalogue, model_version: str) -> dict[str, str]:
        return {"catalogue_version": catalogue.version, "model_version": model_version,
                "uplift_version": self.uplift.model_version if self.uplift else ""}

    def next_best_offer(self, member_id: str, channel: Channel, store_id: str | None, k: int,
                        basket_item_ids: Sequence[str] = (), context: dict[str, str] | None = None) -> NextBestOffers:
        """Ranked offers; the chosen ones are recorded as contacts, so caps and fatigue count them."""
        now = self.clock()
        catalogue = self.catalogue.current()
        member = self._member(member_id)
        model, model_version = self.model()
        ranking = self._charge_invitations(self._rank(catalogue.offers, member, channel, store_id, k, now, model,
                                                         model_version))
        decision_id = uuid.uuid4().hex
        self.store.record_contacts(member_id, channel, decision_id, [s.offer.id for s in ranking.chosen], now)
        self.log.append(DecisionRecord(
            now, RecordType.NEXT_BEST_OFFER, decision_id, member_id, channel.value, store_id,
            **self._versions(catalogue, model_version), member=member, basket=tuple(basket_item_ids),
            context=context or {}, scored=ranking.scored, excluded=ranking.excluded,
            chosen=[s.offer.id for s in ranking.chosen]))
        return NextBestOffers(decision_id, ranking, catalogue.version, model_version, model is None)

    def _charge_invitations(self, ranking: Ranking) -> Ranking:
        """Offers that are shown, not issued (event invitations), spend their budget when shown.

        A showing the budget cannot cover is dropped with `budget_exhausted`; the list is not back-filled.
        """
        chosen, excluded = [], list(ranking.excluded)
        for s in ranking.chosen:
            b = s.offer.budget
            if s.offer.kind.is_coupon or (b.max_count is None and b.max_money is None) or self.store.reserve(s.offer):
                chosen.append(s)
            else:
                excluded.append(Exclusion(s.offer.id, Rule.BUDGET_EXHAUSTED, "invitation budget spent"))
        return Ranking(chosen, excluded, ranking.scored)

    def decide_coupon(self, request_id: str, member_id: str, channel: Channel, store_id: str | None,
                      basket_item_ids: Sequence[str] = (), basket_value: float = 0.0) -> CouponDecision:
        """Issue at most one coupon; a retried `request_id` gets the stored decision and never a second coupon."""
        stored = self.store.stored_decision(request_id)
        if stored is not None:
            return CouponDecision.from_json(stored, replayed=True)
        now = self.clock()
        catalogue = self.catalogue.current()
        member = self._member(member_id)
        coupons = [o for o in catalogue.offers if o.kind.is_coupon]
        model, model_version = self.model()
        ranking = self._rank(coupons, member, channel, store_id, len(coupons), now, model, model_version)
        decision_id = uuid.uuid4().hex
        fatigue = self.config.fatigue.get(channel)
        failures: list[tuple[ScoredOffer, str, str]] = []
        decision: CouponDecision | None = None
        for cand in (s for s in ranking.scored if s.score > 0):  # best first; a same-target runner-up too
            coupon_id = f"cpn-{uuid.uuid4().hex[:20]}"
            issued = CouponDecision(decision_id, True, coupon_id, cand.offer.id, ISSUED,
                                    f"issued {cand.offer.id}: {', '.join(cand.reasons)}", cand.score)
            result = self.store.issue(cand.offer, member_id, channel.value, now, request_id, decision_id, coupon_id,
                                      issued.to_json(), fatigue)
            if result.outcome == "replayed":
                assert result.stored is not None
                return CouponDecision.from_json(result.stored, replayed=True)
            if result.outcome == ISSUED:
                decision = issued
                break
            failures.append((cand, result.outcome, f"{cand.offer.id}: {result.outcome} at reservation"))
        if decision is None:
            decision = self._refusal(decision_id, ranking, failures)
            earlier = self.store.store_decision(request_id, decision.to_json())
            if earlier is not None:
                return CouponDecision.from_json(earlier, replayed=True)
        self.log.append(DecisionRecord(
            now, RecordType.DECIDE_COUPON, decision.decision_id, member_id, channel.value, store_id,
            **self._versions(catalogue, model_version), member=member, basket=tuple(basket_item_ids),
            scored=ranking.scored, excluded=ranking.excluded, decision=decision.to_json(), request_id=request_id,
            basket_value=basket_value))
        return decision

    def _refusal(self, decision_id: str, ranking: Ranking,
                 failures: list[tuple[ScoredOffer, str, str]]) -> CouponDecision:
        if failures:
            cand, rule, detail = failures[0]
            return CouponDecision(decision_id, False, "", cand.offer.id, rule, detail, cand.score)
        relevant = [e for e in ranking.excluded if e.rule in COUPON_RULES]
        if not relevant:
            return CouponDecision(decision_id, False, "", "", NO_ELIGIBLE_OFFER, "no coupon offer applies", 0.0)
        furthest = max(relevant, key=lambda e: COUPON_RULES.index(e.rule))
        if furthest.rule in (Rule.NOT_VALID_NOW, Rule.WRONG_CHANNEL, Rule.OUT_OF_STOCK):
            return CouponDecision(decision_id, False, "", furthest.offer_id, NO_ELIGIBLE_OFFER,
                                  f"{furthest.rule}: {furthest.detail}", 0.0)
        score = next((s.score for s in ranking.scored if s.offer.id == furthest.offer_id), 0.0)
        return CouponDecision(decision_id, False, "", furthest.offer_id, furthest.rule, furthest.detail, score)

    def redeem(self, coupon_id: str, member_id: str, order_value: float, store_id: str | None = None,
               channel: Channel | None = None) -> tuple[bool, str]:
        """(newly_redeemed, offer_id); a retry returns newly_redeemed=False and books nothing twice."""
        now = self.clock()
        coupon = self.store.coupon(member_id, coupon_id, now)
        if coupon is None:
            raise NotFound(f"coupon_id: member {member_id!r} holds no coupon {coupon_id!r}")
        catalogue = self.catalogue.current()
        offer = catalogue.get(coupon.offer_id)
        if offer is None:
            raise FailedPrecondition(f"coupon {coupon_id}: offer {coupon.offer_id} is no longer in the catalogue")
        redemption_id = uuid.uuid4().hex
        newly = self.store.redeem(coupon, offer, order_value, now, redemption_id)
        if newly:
            self.log.append(DecisionRecord(
                now, RecordType.REDEEM_COUPON, coupon.decision_id, member_id, channel.value if channel else None,
                store_id, catalogue.version, coupon_id=coupon_id, offer_id=offer.id, redemption_id=redemption_id,
                order_value=order_value, discount=offer.discount(order_value)))
        return newly, offer.id
