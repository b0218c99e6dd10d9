"""Offer decisions as pure functions: eligibility -> holdout -> contact policy -> scoring -> arbitration.

Everything the pipeline needs about the member and the offers' state (contacts, budgets, stock,
affinity) is read beforehand in one round trip and passed in, so these rules are tested without Redis
and the same code explains a decision that it made. Each rule that admits an offer adds a reason code;
the first rule that rejects one names it, and explain mode returns those rejections.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.offers.catalogue import Cap, Offer

NEUTRAL_AFFINITY = 0.5
"""Affinity of a whole-basket offer, or of a member the model does not know: an average response."""


class Rule(StrEnum):
    """Names of the rules that exclude an offer (stable strings: they reach callers and the decision log)."""

    NOT_VALID_NOW = "not_valid_now"
    WRONG_CHANNEL = "wrong_channel"
    NO_CONSENT = "no_consent"
    NOT_ELIGIBLE_TIER = "not_eligible_tier"
    NOT_ELIGIBLE_LIFECYCLE = "not_eligible_lifecycle"
    OUT_OF_STOCK = "out_of_stock"
    HOLDOUT = "holdout"
    CAP_REACHED = "cap_reached"
    FATIGUE_CAP = "fatigue_cap"
    BUDGET_EXHAUSTED = "budget_exhausted"
    NOT_WORTH_IT = "not_worth_it"
    SAME_TARGET = "same_target"
    BELOW_TOP_K = "below_top_k"


@dataclass(frozen=True)
class MemberView:
    """What the rules know about a member (from the feature store's profile)."""

    member_id: str
    tier: str
    stage: LifecycleStage
    consent: frozenset[Channel]
    """Channels on which the member accepts marketing."""
    feature_version: str = ""
    """Feature-store generation the profile was read from (logged with every decision)."""


@dataclass(frozen=True)
class UpliftEstimate:
    """The uplift model's conversion probabilities for a member without and with a coupon."""

    p_control: float
    p_treated: float


@dataclass(frozen=True)
class OfferState:
    """Per-offer facts read from the stores for this request."""

    member_contacts: int = 0
    """Times this member was given the offer within its cap period."""
    budget_left: bool = True
    """Snapshot only: the atomic reservation at issue time is what enforces the budget."""
    target_in_stock: bool = True
    affinity: float = NEUTRAL_AFFINITY
    """Member's affinity to the offer's target, as a quantile of their item scores in [0, 1]."""


@dataclass(frozen=True)
class Exclusion:
    offer_id: str
    rule: Rule
    detail: str


@dataclass(frozen=True)
class ScoredOffer:
    offer: Offer
    score: float
    """Expected net value of making the offer."""
    propensity: float
    uplift: float
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Ranking:
    chosen: list[ScoredOffer]
    excluded: list[Exclusion]
    scored: list[ScoredOffer] = field(default_factory=list)
    """Every offer that reached scoring, best first (for the decision log)."""


def in_holdout(offer_id: str, member_id: str, share: float) -> bool:
    """Stable assignment: the same (offer, member) pair is always in or out, on every worker and restart."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(f"{offer_id}\x1f{member_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < share


def _tier_rule(offer: Offer, member: MemberView, tiers: TierLadder) -> tuple[bool, str]:
    rule = offer.eligibility
    if rule.min_tier is not None:
        return tiers.at_least(member.tier, rule.min_tier), rule.tier_rule
    if rule.tiers:
        return member.tier in rule.tiers, rule.tier_rule
    return True, rule.tier_rule


def screen(offer: Offer, member: MemberView, channel: Channel, now: float, state: OfferState,
           tiers: TierLadder) -> Exclusion | list[str]:
    """Eligibility, holdout and the per-member cap: the rule that excludes the offer, or the admitting reasons."""
    def out(rule: Rule, detail: str) -> Exclusion:
        return Exclusion(offer.id, rule, detail)

    if not offer.valid_at(now):
        return out(Rule.NOT_VALID_NOW, f"valid {offer.valid_from.isoformat()} .. {offer.valid_until.isoformat()}")
    if channel not in offer.channels:
        return out(Rule.WRONG_CHANNEL, f"offered on {', '.join(offer.channels)}, not {channel}")
    if channel not in member.consent:
        return out(Rule.NO_CONSENT, f"member has no marketing consent on {channel}")
    ok, tier_rule = _tier_rule(offer, member, tiers)
    if not ok:
        return out(Rule.NOT_ELIGIBLE_TIER, f"needs {tier_rule}, member is {member.tier}")
    stages = offer.eligibility.stages
    if stages and member.stage not in stages:
        return out(Rule.NOT_ELIGIBLE_LIFECYCLE, f"needs stage in {'|'.join(stages)}, member is {member.stage}")
    if not state.target_in_stock:
        return out(Rule.OUT_OF_STOCK, f"nothing in {offer.target.key} is in stock for this channel/store")
    if in_holdout(offer.id, member.member_id, offer.holdout_share):
        return out(Rule.HOLDOUT, f"member is in the {offer.holdout_share:.0%} holdout of {offer.id}")
    cap = offer.per_member_cap
    if cap is not None and state.member_contacts >= cap.count:
        return out(Rule.CAP_REACHED, f"{state.member_contacts} of {cap.count} contacts in {cap.period_days:g} days")
    if not state.budget_left:
        return out(Rule.BUDGET_EXHAUSTED, "count or money budget is spent")
    reasons = [f"eligible:{tier_rule}", f"eligible:stage={member.stage}", f"eligible:channel={channel}"]
    if cap is not None:
        reasons.append(f"cap:{state.member_contacts}/{cap.count} in {cap.period_days:g}d")
    return reasons


def score_offer(offer: Offer, state: OfferState, uplift: UpliftEstimate | None) -> ScoredOffer:
    """Expected net value of the offer for this member.

    Without an uplift model: propensity x (value - discount cost) - issue cost, the propensity being the
    offer's base response scaled by the member's affinity to its target. With one (coupons only):
    uplift x value - propensity x discount cost - issue cost, because the discount is paid by everyone
    who redeems, including members who would have bought anyway, while value comes only from the
    purchases the coupon causes.
    """
    factor = 2.0 * state.affinity
    parts = [f"score:affinity={state.affinity:.3f}"]
    if uplift is not None and offer.kind.is_coupon:
        propensity = min(1.0, uplift.p_treated * factor)
        lift = (uplift.p_treated - uplift.p_control) * factor
        score = lift * offer.value - propensity * offer.redemption_cost - offer.issue_cost
        parts.append(f"score:uplift={lift:.4f}")
    else:
        propensity = min(1.0, offer.base_response * factor)
        lift = 0.0
        score = propensity * (offer.value - offer.redemption_cost) - offer.issue_cost
    parts += [f"score:propensity={propensity:.4f}", f"score:value={offer.value:g}",
              f"score:cost={offer.redemption_cost:g}", f"score:net={score:.4f}"]
    return ScoredOffer(offer, score, propensity, lift, tuple(parts))


def rank_offers(offers: Sequence[Offer], member: MemberView, channel: Channel, now: float,
                states: Mapping[str, OfferState], tiers: TierLadder, k: int,
                channel_contacts: int = 0, fatigue: Cap | None = None,
                uplift: UpliftEstimate | None = None,
                affinity: Callable[[Offer], float] | None = None) -> Ranking:
    """The pipeline for one member: the top `k` offers worth making, one per target, and every exclusion.

    `affinity`, when given, replaces `states[...].affinity` and is asked only for the offers that reach
    scoring (a product with the serving model's factors: not worth making for offers already excluded)."""
    excluded: list[Exclusion] = []
    scored: list[ScoredOffer] = []
    fatigued = fatigue if fatigue is not None and channel_contacts >= fatigue.count else None
    for offer in offers:
        state = states.get(offer.id, OfferState())
        verdict = screen(offer, member, channel, now, state, tiers)
        if isinstance(verdict, Exclusion):
            excluded.append(verdict)
            continue
        if fatigued:
            excluded.append(Exclusion(offer.id, Rule.FATIGUE_CAP, f"{channel_contacts} contacts on {channel} "
                                      f"in {fatigued.period_days:g} days (cap {fatigued.count})"))
            continue
        if affinity is not None:
            state = replace(state, affinity=affinity(offer))
        s = score_offer(offer, state, uplift)
        scored.append(ScoredOffer(s.offer, s.score, s.propensity, s.uplift, (*verdict, *s.reasons)))
    scored.sort(key=lambda s: (-s.score, s.offer.id))
    chosen: list[ScoredOffer] = []
    targets: dict[str, str] = {}
    for s in scored:
        if s.score <= 0:
            excluded.append(Exclusion(s.offer.id, Rule.NOT_WORTH_IT, f"expected net value {s.score:.4f} <= 0"))
        elif s.offer.target.key in targets:
            excluded.append(Exclusion(s.offer.id, Rule.SAME_TARGET,
                                      f"{targets[s.offer.target.key]} scores higher on {s.offer.target.key}"))
        elif len(chosen) >= k:
            excluded.append(Exclusion(s.offer.id, Rule.BELOW_TOP_K, f"score {s.score:.4f} ranks below the top {k}"))
        else:
            targets[s.offer.target.key] = s.offer.id
            chosen.append(s)
    return Ranking(chosen, excluded, scored)
