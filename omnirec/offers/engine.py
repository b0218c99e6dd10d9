"""The offers engine: NextBestOffer, DecideCoupon and RedeemCoupon in domain terms (no grpc).

A decision reads everything it needs in one round trip: the member's profile and which offer targets
have an item in stock where the member is (the feature store), with the member's recent contacts, the
offers' budgets and any decision stored under the request id (the offer store), planned together through
`AsyncFeatureReader.read_request(extra=...)`. It then runs the pure pipeline in `offers.policy`, commits
with one script call of `offers.store` (issue a coupon; record what was shown) and appends the decision to
the decision log. The servicer only converts protos; the engine runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from omnirec.domain.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from omnirec.domain.idmap import IdMap
from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.reader import AsyncFeatureReader, ItemSelection, RequestFeatures
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
    rank_offers,
)
from omnirec.offers.store import DAY, OfferSnapshot, OfferStore, StoredDecision, budget_left
from omnirec.offers.uplift import UpliftScores

T = TypeVar("T")
ISSUED = "issued"
NO_ELIGIBLE_OFFER = "no_eligible_offer"
COUPON_RULES = (Rule.NOT_VALID_NOW, Rule.WRONG_CHANNEL, Rule.OUT_OF_STOCK, Rule.NO_CONSENT, Rule.NOT_ELIGIBLE_TIER,
                Rule.NOT_ELIGIBLE_LIFECYCLE, Rule.HOLDOUT, Rule.CAP_REACHED, Rule.FATIGUE_CAP, Rule.BUDGET_EXHAUSTED,
                Rule.NOT_WORTH_IT)
"""Exclusion rules in pipeline order: when no coupon is issued, the reason is the rule that stopped the
candidate which got furthest (a member in the holdout is told `holdout`, not `not_eligible_tier`)."""


class AffinityModel(Protocol):
    """What the engine needs from a model bundle (`bundle.ModelBundle` provides it)."""

    @property
    def items(self) -> IdMap: ...

    @property
    def item_factors(self) -> np.ndarray: ...

    def member_vector(self, member_id: str) -> np.ndarray | None: ...


ModelSource = Callable[[], tuple[AffinityModel | None, str]]
"""The model serving now and its version (the service's bundle changes on hot reload)."""


REFERENCE_ITEMS = 4096
"""Items whose scores a target's best score is ranked among: all of a smaller catalogue, else this many
evenly spaced ones. Scoring every item of a 100,000-item catalogue per request costs ~0.6 ms of CPU; the
quantile among 4,096 of them is within 0.008 (one standard error) of the quantile among all."""


def affinity(reference_scores: np.ndarray, target_scores: np.ndarray) -> float:
    """Quantile of the member's best-scored target item among the reference items' scores, in [0, 1]."""
    if len(target_scores) == 0:
        return NEUTRAL_AFFINITY
    return int(np.count_nonzero(reference_scores < target_scores.max())) / len(reference_scores)


def reference_rows(n_items: int) -> np.ndarray:
    """The reference items (`REFERENCE_ITEMS`): every item, or an even spread over the catalogue."""
    if n_items <= REFERENCE_ITEMS:
        return np.arange(n_items)
    return np.linspace(0, n_items - 1, REFERENCE_ITEMS).astype(np.int64)


def selection(target: Target) -> ItemSelection:
    """The feature store's view of an offer target (a basket target names no items)."""
    return ItemSelection(item_ids=target.ids if target.scope == "items" else (),
                         categories=target.ids if target.scope == "categories" else (),
                         brands=target.ids if target.scope == "brands" else ())


def request_fingerprint(member_id: str, channel: Channel, store_id: str | None, basket_item_ids: Sequence[str],
                        basket_value: float) -> str:
    """What a DecideCoupon request id is bound to: a retry must send the same member, channel, store and basket."""
    raw = "\x1f".join([member_id, channel.value, store_id or "", *sorted(basket_item_ids), repr(float(basket_value))])
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class NextBestOffers:
    decision_id: str
    ranking: Ranking
    catalogue_version: str
    model_version: str
    degraded: bool
    """Something the answer needs was missing: no model (every affinity neutral) or no member state."""
    degraded_reason: str = ""


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


TARGET_CANDIDATES = 512
"""Items of a target whose scores stand for all of its items: every item of a smaller target, else the
`TARGET_CANDIDATES` with the largest factor norms (an item's score is at most its norm times the member's,
so they hold a target's best scores). A category of a 100,000-item catalogue holds thousands of items, and
its affinity is the quantile of its best score: on the 1,000,000-member benchmark's factors the
approximation moves an affinity by 0.0002 on average and at most 0.006 (below the reference items' own
standard error, 0.008), checked in `tests/offers/test_offer_engine.py`, for an eighth of the product."""


def candidate_rows(factors: np.ndarray, rows: np.ndarray, n: int = TARGET_CANDIDATES) -> np.ndarray:
    """`rows` (item rows of `factors`), or the `n` of them with the largest factor norms, sorted."""
    if len(rows) <= n:
        return np.sort(rows)
    norms = np.einsum("ij,ij->i", factors[rows], factors[rows], dtype=np.float64)
    return np.sort(rows[np.argpartition(-norms, n - 1)[:n]])


class TargetFactors:
    """Offer target -> affinity, from one matrix per feature generation and model version: the reference
    items' factor rows then each target's candidate rows (`candidate_rows`), so a request's affinities are
    one product of a few thousand rows with the member's vector, not one per target over all its items.

    Categories and brands are resolved in the feature store (a category can hold thousands of items), so
    this is read once per generation, model and new target, not per request (as a bundle's category index
    is built once per bundle)."""

    def __init__(self, reader: AsyncFeatureReader) -> None:
        self.reader = reader
        self._for: tuple[int, str] | None = None
        self._rows: dict[str, np.ndarray] = {}
        """Target key -> its candidate item rows (internal item indices)."""
        self._matrix = np.zeros((0, 0), np.float32)
        self._segments: dict[str, tuple[int, int]] = {}
        self._filled: list[str] = []
        self._starts: list[int] = []
        self._n_reference = 0

    def loaded(self, targets: Sequence[Target], generation: int, model_version: str) -> bool:
        """Whether `load` has nothing to read for these targets."""
        return self._for == (generation, model_version) and all(
            t.key in self._rows for t in targets if t.scope != "basket")

    async def load(self, targets: Sequence[Target], generation: int, model: AffinityModel,
                   model_version: str) -> None:
        """Read the items of the targets not seen yet under this generation and model, and restack."""
        factors = model.item_factors
        if self._for != (generation, model_version):
            self._for, self._rows, self._matrix = (generation, model_version), {}, np.zeros((0, 0), np.float32)
        missing = list({t.key: t for t in targets if t.scope != "basket" and t.key not in self._rows}.values())
        if missing:
            _, found = await self.reader.selection_items([selection(t) for t in missing])
            for target, ids in zip(missing, found, strict=True):
                idx = model.items.to_internal(np.array(ids, dtype=object), strict=False) if ids else np.zeros(0, int)
                self._rows[target.key] = candidate_rows(factors, np.unique(idx[idx >= 0]))
        if missing or self._matrix.size == 0:
            self._build(factors)

    def affinities(self, vector: np.ndarray) -> dict[str, float]:
        """Target key -> the member's affinity (`affinity`), for every loaded target."""
        scores = self._matrix @ vector
        reference = scores[:self._n_reference]
        if not self._starts:
            return dict.fromkeys(self._segments, NEUTRAL_AFFINITY)
        best = np.maximum.reduceat(scores, self._starts)  # each target's best score (its rows are contiguous)
        n = len(reference)
        found = {key: int(np.count_nonzero(reference < b)) / n for key, b in zip(self._filled, best, strict=True)}
        return {key: found.get(key, NEUTRAL_AFFINITY) for key in self._segments}

    def _build(self, factors: np.ndarray) -> None:
        reference = reference_rows(len(factors))
        parts, at = [reference], len(reference)
        self._segments = {}
        for key, rows in self._rows.items():
            self._segments[key] = (at, at + len(rows))
            parts.append(rows)
            at += len(rows)
        self._n_reference = len(reference)
        self._matrix = np.ascontiguousarray(factors[np.concatenate(parts)], dtype=np.float32)
        self._filled = [key for key, (start, end) in self._segments.items() if end > start]
        """Targets with items in the model (an empty one is neutral, as `affinity` has it)."""
        self._starts = [self._segments[key][0] for key in self._filled]


class _LazyAffinities:
    """Offer -> the member's affinity to its target: one product for all targets, made when the policy
    scores a first offer (none when every offer is excluded before scoring)."""

    def __init__(self, targets: TargetFactors, vector: np.ndarray) -> None:
        self.targets, self.vector = targets, vector
        self.found: dict[str, float] | None = None

    def __call__(self, offer: Offer) -> float:
        if self.found is None:
            self.found = self.targets.affinities(self.vector)
        return self.found.get(offer.target.key, NEUTRAL_AFFINITY)


class OfferEngine:
    def __init__(self, config: OfferConfig, catalogue: CatalogueSource, reader: AsyncFeatureReader,
                 store: OfferStore, log: DecisionLog, tiers: TierLadder | None = None,
                 lifecycle: LifecycleRules | None = None, model: ModelSource | None = None,
                 uplift: UpliftScores | None = None, clock: Callable[[], float] = time.time,
                 default_budget_s: float = 1.0) -> None:
        self.config = config
        self.catalogue = catalogue
        self.reader = reader
        self.store = store
        self.log = log
        self.tiers = tiers or TierLadder()
        self.lifecycle = lifecycle or LifecycleRules()
        self.model = model or (lambda: (None, ""))
        self.uplift = uplift
        self.clock = clock
        self.default_budget_s = default_budget_s
        self.targets = TargetFactors(reader)
        self._selections: dict[str, ItemSelection] = {}

    def close(self) -> None:
        """Close the reader's and the store's pipelined connections and the decision log."""
        self.reader.close()
        self.store.close()
        self.log.close()

    @staticmethod
    async def _within(deadline: float, step: Awaitable[T], what: str) -> T:
        try:
            async with asyncio.timeout_at(deadline):
                return await step
        except TimeoutError:
            raise Unavailable(f"{what} did not finish within the request's time budget") from None

    def _deadline(self, budget_s: float | None) -> float:
        return asyncio.get_running_loop().time() + (self.default_budget_s if budget_s is None else budget_s)

    def _horizon(self, offers: Sequence[Offer], channel: Channel) -> float:
        """How far back contacts matter: the longest per-member cap period and the channel's fatigue period."""
        fatigue = self.config.fatigue.get(channel)
        periods = [o.per_member_cap.period_days for o in offers if o.per_member_cap]
        return max([*periods, fatigue.period_days if fatigue else 0.0, 1.0]) * DAY

    async def _read(self, member_id: str, channel: Channel, store_id: str | None, offers: Sequence[Offer],
                    now: float, deadline: float,
                    request_id: str | None = None) -> tuple[RequestFeatures, OfferSnapshot, dict[str, bool]]:
        """Profile, stock of every target and the offer state, in one round trip."""
        where = store_id if channel.is_physical and store_id else None
        targeted = [o for o in offers if o.target.scope != "basket"]
        snapshot = self.store.plan_snapshot(member_id, offers, now - self._horizon(offers, channel), request_id, now)
        features = await self._within(deadline, self.reader.read_request(
            member_id, store_id=where, selections=[self._selection(o.target) for o in targeted],
            extra=snapshot.queue, member_lists=False),
            "the offer read")
        in_stock = {o.id: ok for o, ok in zip(targeted, features.selections_in_stock, strict=True)}
        return features, snapshot.result, in_stock

    def _selection(self, target: Target) -> ItemSelection:
        """`selection(target)`, built once per target (the feature store caches its reads' arguments by it)."""
        found = self._selections.get(target.key)
        if found is None:
            found = self._selections[target.key] = selection(target)
        return found

    def _member(self, features: RequestFeatures, now: float) -> MemberView:
        p = features.profile
        if p is None:
            raise NotFound(f"member_id: unknown member {features.member_id!r}")
        return MemberView(p.member_id, p.tier, p.stage_at(self.lifecycle, now),
                          frozenset(c for c, ok in p.consent.items() if ok), f"generation-{features.generation}")

    async def _rank(self, offers: Sequence[Offer], member: MemberView, channel: Channel, k: int, now: float,
                    snapshot: OfferSnapshot, in_stock: dict[str, bool], generation: int,
                    model: AffinityModel | None, model_version: str, deadline: float) -> Ranking:
        vector = model.member_vector(member.member_id) if model is not None else None
        affinity_of: Callable[[Offer], float] | None = None
        if model is not None and vector is not None:
            targets = [o.target for o in offers]
            if not self.targets.loaded(targets, generation, model_version):
                await self._within(deadline, self.targets.load(targets, generation, model, model_version),
                                   "the offer targets' items")
            affinity_of = _LazyAffinities(self.targets, vector)
        contacts = snapshot.contacts
        states = {}
        for offer in offers:
            cap = offer.per_member_cap
            states[offer.id] = OfferState(
                member_contacts=contacts.count(now - cap.period_days * DAY, offer_id=offer.id) if cap else 0,
                budget_left=budget_left(offer, snapshot.usage[offer.id]),
                target_in_stock=in_stock.get(offer.id, True),
            )
        fatigue = self.config.fatigue.get(channel)
        channel_contacts = contacts.count(now - fatigue.period_days * DAY, channel=channel) if fatigue else 0
        uplift = self.uplift.get(member.member_id) if self.uplift is not None else None
        return rank_offers(offers, member, channel, now, states, self.tiers, k, channel_contacts, fatigue, uplift,
                           affinity_of)

    def _versions(self, catalogue: Catalogue, model_version: str) -> dict[str, str]:
        return {"catalogue_version": catalogue.version, "model_version": model_version,
                "uplift_version": self.uplift.model_version if self.uplift else ""}

    async def next_best_offer(self, member_id: str, channel: Channel, store_id: str | None, k: int,
                              basket_item_ids: Sequence[str] = (), context: dict[str, str] | None = None,
                              shown: bool = False, budget_s: float | None = None) -> NextBestOffers:
        """Ranked offers. With `shown`, the chosen ones are recorded as contacts (so caps and fatigue count
        them) and invitations are charged to their budgets; without it the call changes nothing.

        When the member's state cannot be read (Redis down or slow, nothing materialised) the answer is
        degraded: no offer, because eligibility and marketing consent are unknown."""
        now = self.clock()
        deadline = self._deadline(budget_s)
        catalogue = self.catalogue.current()
        model, model_version = self.model()
        decision_id = uuid.uuid4().hex
        versions = self._versions(catalogue, model_version)
        basket = tuple(basket_item_ids)
        try:
            features, snapshot, in_stock = await self._read(member_id, channel, store_id, catalogue.offers, now,
                                                            deadline)
        except (Unavailable, FeatureStoreError) as exc:
            self.log.append(DecisionRecord(now, RecordType.NEXT_BEST_OFFER, decision_id, member_id, channel.value,
                                           store_id, **versions, basket=basket, context=context or {}))
            return NextBestOffers(decision_id, Ranking([], []), catalogue.version, model_version, True,
                                  f"member state unavailable, no offer made: {exc}")
        member = self._member(features, now)
        ranking = await self._rank(catalogue.offers, member, channel, k, now, snapshot, in_stock,
                                   features.generation, model, model_version, deadline)
        if shown:
            ranking = await self._show(ranking, member_id, channel, decision_id, now, deadline)
        self.log.append(DecisionRecord(now, RecordType.NEXT_BEST_OFFER, decision_id, member_id, channel.value,
                                       store_id, **versions, member=member, basket=basket, context=context or {},
                                       scored=ranking.scored, excluded=ranking.excluded,
                                       chosen=[s.offer.id for s in ranking.chosen]))
        return NextBestOffers(decision_id, ranking, catalogue.version, model_version, model is None,
                              "no model serving: affinities are neutral" if model is None else "")

    async def _show(self, ranking: Ranking, member_id: str, channel: Channel, decision_id: str, now: float,
                    deadline: float) -> Ranking:
        """Record the chosen offers; an invitation whose budget ran out meanwhile is dropped, not back-filled."""
        flags = await self._within(deadline, self.store.show(member_id, channel, decision_id,
                                                             [s.offer for s in ranking.chosen], now), "recording")
        chosen = [s for s, ok in zip(ranking.chosen, flags, strict=True) if ok]
        excluded = list(ranking.excluded) + [Exclusion(s.offer.id, Rule.BUDGET_EXHAUSTED, "invitation budget spent")
                                             for s, ok in zip(ranking.chosen, flags, strict=True) if not ok]
        return Ranking(chosen, excluded, ranking.scored)

    async def decide_coupon(self, request_id: str, member_id: str, channel: Channel, store_id: str | None,
                            basket_item_ids: Sequence[str] = (), basket_value: float = 0.0,
                            budget_s: float | None = None) -> CouponDecision:
        """Issue at most one coupon; a retried `request_id` gets the stored decision and never a second coupon.

        A request id is bound to its request: reused for another member, channel, store or basket it is
        refused (`InvalidArgument` naming `request_id`), never answered with another request's decision."""
        now = self.clock()
        deadline = self._deadline(budget_s)
        fingerprint = request_fingerprint(member_id, channel, store_id, basket_item_ids, basket_value)
        catalogue = self.catalogue.current()
        coupons = [o for o in catalogue.offers if o.kind.is_coupon]
        features, snapshot, in_stock = await self._read(member_id, channel, store_id, coupons, now, deadline,
                                                        request_id)
        if snapshot.stored is not None and not (snapshot.stored.pending and snapshot.stored.request == fingerprint):
            return self._replay(snapshot.stored, fingerprint, request_id)
        snapshot = await self._within(deadline, self.store.reap(snapshot, coupons, now), "reaping reservations")
        member = self._member(features, now)
        model, model_version = self.model()
        ranking = await self._rank(coupons, member, channel, len(coupons), now, snapshot, in_stock,
                                   features.generation, model, model_version, deadline)
        decision_id = uuid.uuid4().hex
        fatigue = self.config.fatigue.get(channel)
        failures: list[tuple[ScoredOffer, Rule, str]] = []
        decision: CouponDecision | None = None
        for cand in (s for s in ranking.scored if s.score > 0):  # best first; a same-target runner-up too
            issued = CouponDecision(decision_id, True, f"cpn-{uuid.uuid4().hex[:20]}", cand.offer.id, ISSUED,
                                    f"issued {cand.offer.id}: {', '.join(cand.reasons)}", cand.score)
            result = await self._within(deadline, self.store.issue(
                cand.offer, member_id, channel, now, request_id, fingerprint, issued.to_json(), fatigue), "issuing")
            if result.stored is not None:
                return self._replay(result.stored, fingerprint, request_id)
            if result.outcome == ISSUED:
                decision = issued
                break
            failures.append((cand, Rule(result.outcome), f"{cand.offer.id}: {result.outcome} at reservation"))
        if decision is None:
            decision = self._refusal(decision_id, ranking, failures)
            earlier = await self._within(deadline, self.store.store_decision(request_id, fingerprint,
                                                                             decision.to_json(), member_id), "storing")
            if earlier is not None:
                return self._replay(earlier, fingerprint, request_id)
        self.log.append(DecisionRecord(
            now, RecordType.DECIDE_COUPON, decision.decision_id, member_id, channel.value, store_id,
            **self._versions(catalogue, model_version), member=member, basket=tuple(basket_item_ids),
            scored=ranking.scored, excluded=ranking.excluded, decision=decision.to_json(), request_id=request_id,
            basket_value=basket_value))
        return decision

    def _replay(self, stored: StoredDecision, fingerprint: str, request_id: str) -> CouponDecision:
        if stored.request is not None and stored.request != fingerprint:
            raise InvalidArgument("request_id", f"{request_id!r} was already used for a different request "
                                  f"(member, channel, store or basket) within the last "
                                  f"{self.config.idempotency_days:g} days; send a new request_id per checkout")
        return CouponDecision(**stored.decision, replayed=True)  # type: ignore[arg-type]

    @staticmethod
    def _refusal(decision_id: str, ranking: Ranking, failures: list[tuple[ScoredOffer, Rule, str]]) -> CouponDecision:
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

    async def redeem(self, coupon_id: str, member_id: str, order_value: float, store_id: str | None = None,
                     channel: Channel | None = None, budget_s: float | None = None) -> tuple[bool, str]:
        """(newly_redeemed, offer_id); a retry returns newly_redeemed=False and books nothing twice."""
        now = self.clock()
        deadline = self._deadline(budget_s)
        coupon = await self._within(deadline, self.store.coupon(member_id, coupon_id, now), "reading the coupon")
        if coupon is None:
            raise NotFound(f"coupon_id: member {member_id!r} holds no coupon {coupon_id!r}")
        catalogue = self.catalogue.current()
        offer = catalogue.get(coupon.offer_id)
        if offer is None:
            raise FailedPrecondition(f"coupon {coupon_id}: offer {coupon.offer_id} is no longer in the catalogue")
        redemption_id = uuid.uuid4().hex
        newly = await self._within(deadline, self.store.redeem(coupon, offer, order_value, now, redemption_id),
                                   "redeeming")
        if newly:
            self.log.append(DecisionRecord(
                now, RecordType.REDEEM_COUPON, coupon.decision_id, member_id, channel.value if channel else None,
                store_id, catalogue.version, coupon_id=coupon_id, offer_id=offer.id, redemption_id=redemption_id,
                order_value=order_value, discount=offer.discount(order_value)))
        return newly, offer.id
