"""Build an audience: score every member, then walk them best first through the campaign's filters and the
offer rules until the audience is full.

Suppression uses `offers.policy.screen` and the same contact ledger as NextBestOffer and DecideCoupon, so
a member is never treated differently by a campaign and by the app. Stores are read a chunk of members
at a time (one pipelined round trip per store per chunk), and only as far down the ranking as the
audience needs: the summary counts are over the members examined.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from omnirec.audience.model import Audience, AudienceRequest, AudienceRows, MemberVerdict, RankBy, Suppression
from omnirec.audience.scoring import affinity_scores, ranked, target_vectors
from omnirec.domain.errors import FailedPrecondition, InvalidArgument, OmnirecError, Unavailable
from omnirec.domain.idmap import IdMap
from omnirec.domain.lifecycle import DAY, STAGES, LifecycleRules, lifecycle_stages
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.feature_store.model import MemberProfile
from omnirec.offers.catalogue import Cap, Catalogue, Offer, Target
from omnirec.offers.policy import Exclusion, MemberView, OfferState, in_holdout, screen
from omnirec.offers.store import ContactHistory, Wallet
from omnirec.offers.uplift import UpliftScores

ProfileReader = Callable[[Sequence[str]], tuple[int, list[MemberProfile | None]]]
"""Profiles of many members in one round trip, with the feature generation they were read from."""
MarketingReader = Callable[[Sequence[str], float, float, bool], list[tuple[ContactHistory, Wallet]]]
"""(member ids, contacts since, now, wallets too) -> each member's contact history and wallet (empty unless
asked: only an offer's `already_redeemed` rule needs it), in one round trip."""


class AudienceCancelled(OmnirecError):
    """The caller went away or its deadline passed; the work stopped at the next chunk."""

    status_code = "CANCELLED"

    def __init__(self, examined: int) -> None:
        self.examined = examined
        """Members read from the stores before the work stopped."""
        super().__init__(f"audience pull cancelled after {examined:,} members")


@dataclass(frozen=True)
class FactorModel:
    """What audiences need from a model bundle: member and item factors under their id maps."""

    version: str
    members: IdMap
    member_factors: np.ndarray
    items: IdMap
    item_factors: np.ndarray
    popularity: np.ndarray | None = None


@dataclass(frozen=True)
class AudienceSources:
    """The model, catalogue and stores one pull reads, fixed for its whole duration."""

    model: FactorModel | None
    uplift: UpliftScores | None
    catalogue: Catalogue
    target_items: Callable[[Target], Sequence[str]]
    """Item ids a target covers (from the item catalogue)."""
    profiles: ProfileReader
    marketing: MarketingReader


@dataclass(frozen=True)
class _Scored:
    offer: Offer | None
    member_ids: np.ndarray
    scores: np.ndarray
    version: str


class AudienceBuilder:
    def __init__(self, tiers: TierLadder, lifecycle: LifecycleRules, fatigue: Mapping[Channel, Cap],
                 chunk: int = 4096) -> None:
        self.tiers = tiers
        self.lifecycle = lifecycle
        self.fatigue = fatigue
        self.chunk = chunk

    # --- scoring -------------------------------------------------------------------------------------
    def _offer(self, request: AudienceRequest, catalogue: Catalogue, now: float) -> Offer | None:
        if not request.offer_id:
            return None
        offer = catalogue.get(request.offer_id)
        if offer is None:
            raise InvalidArgument("offer_id", f"unknown offer {request.offer_id!r} (catalogue {catalogue.version})")
        if request.channel not in offer.channels:
            raise InvalidArgument("channel", f"offer {offer.id} is offered on {', '.join(offer.channels)}, "
                                             f"not {request.channel}")
        if not offer.valid_at(now):
            raise FailedPrecondition(f"offer_id: {offer.id} is valid {offer.valid_from.isoformat()} .. "
                                     f"{offer.valid_until.isoformat()}, not now")
        return offer

    def _score(self, request: AudienceRequest, sources: AudienceSources, now: float) -> _Scored:
        request.validate(self.tiers)
        offer = self._offer(request, sources.catalogue, now)
        if request.rank_by is RankBy.UPLIFT:
            if sources.uplift is None:
                raise FailedPrecondition("rank_by: no uplift model is loaded (run `omnirec train-uplift`)")
            u = sources.uplift
            return _Scored(offer, u.members.external_ids, (u.p_treated - u.p_control).astype(np.float32),
                           f"uplift:{u.model_version}")
        model, targets = self.targets(request, offer, sources)
        scores = (np.zeros(len(model.members), np.float32) if targets is None
                  else affinity_scores(model.member_factors, targets))
        return _Scored(offer, model.members.external_ids, scores, model.version)

    def offer(self, request: AudienceRequest, catalogue: Catalogue, now: float) -> Offer | None:
        """The validated request's offer (None for an explicit target)."""
        request.validate(self.tiers)
        return self._offer(request, catalogue, now)

    @staticmethod
    def targets(request: AudienceRequest, offer: Offer | None,
                sources: AudienceSources) -> tuple[FactorModel, np.ndarray | None]:
        """The model and the target's item vectors that affinity is scored against (None for a basket offer:
        every member scores alike). Both engines score from these."""
        model = sources.model
        if model is None:
            raise Unavailable("no model bundle is loaded yet (run `omnirec train` and `omnirec publish`)")
        target = offer.target if offer is not None else request.target
        if target is None or target.scope == "basket":
            return model, None
        idx = model.items.to_internal(np.asarray(list(sources.target_items(target)), dtype=object), strict=False)
        idx = idx[idx >= 0]
        if len(idx) == 0:
            raise InvalidArgument("target", f"no item of {target.key} is known to model {model.version}")
        return model, target_vectors(model.item_factors, idx, model.popularity)

    # --- rules ---------------------------------------------------------------------------------------
    def since(self, request: AudienceRequest, offer: Offer | None, now: float) -> float:
        """How far back the contact ledger is read: the longest of the fatigue and cap periods (a day at least)."""
        fatigue = self.fatigue.get(request.channel)
        cap = offer.per_member_cap if offer is not None else None
        return now - max(fatigue.period_days if fatigue else 0.0, cap.period_days if cap else 0.0, 1.0) * DAY

    def stages(self, profiles: Sequence[MemberProfile | None], now: float) -> list[LifecycleStage | None]:
        """Every member's stage at `now` in one vectorised call (one call per member costs 10x more)."""
        nan = float("nan")
        present = [p for p in profiles if p is not None]
        codes = iter(lifecycle_stages(
            self.lifecycle, now, np.array([p.signup_ts for p in present]),
            np.array([nan if p.last_purchase_ts is None else p.last_purchase_ts for p in present]),
            np.array([nan if p.prev_purchase_ts is None else p.prev_purchase_ts for p in present])).tolist())
        return [None if p is None else STAGES[next(codes)] for p in profiles]

    @staticmethod
    def _filter(request: AudienceRequest, profile: MemberProfile | None,
                stage: LifecycleStage | None) -> tuple[Suppression | None, str]:
        """The campaign's own selection (profile only, no offer state): the first filter a member fails."""
        if profile is None or stage is None:
            return Suppression.NO_PROFILE, "not in the feature store"
        if request.tiers and profile.tier not in request.tiers:
            return Suppression.FILTERED_TIER, f"tier {profile.tier} not in {'|'.join(sorted(request.tiers))}"
        if request.stages and stage not in request.stages:
            return Suppression.FILTERED_STAGE, f"stage {stage} not in {'|'.join(sorted(request.stages))}"
        if request.home_stores and profile.home_store not in request.home_stores:
            return Suppression.FILTERED_STORE, f"home store {profile.home_store or '-'} not selected"
        if request.regions and profile.region not in request.regions:
            return Suppression.FILTERED_REGION, f"region {profile.region or '-'} not selected"
        if not profile.consent.get(request.channel, False):
            return Suppression.NO_CONSENT, f"member has no marketing consent on {request.channel}"
        return None, ""

    def _rules(self, request: AudienceRequest, offer: Offer | None, profile: MemberProfile, stage: LifecycleStage,
               history: ContactHistory, wallet: Wallet, now: float) -> tuple[Suppression | None, str]:
        """The offer's rules (`offers.policy.screen`, as NextBestOffer and DecideCoupon run them) and fatigue."""
        if offer is not None:
            view = MemberView(profile.member_id, profile.tier, stage,
                              frozenset(c for c, ok in profile.consent.items() if ok))
            cap = offer.per_member_cap
            contacts = history.count(now - cap.period_days * DAY, offer_id=offer.id) if cap else 0
            verdict = screen(offer, view, request.channel, now, OfferState(member_contacts=contacts), self.tiers)
            if isinstance(verdict, Exclusion):
                return Suppression(verdict.rule.value), verdict.detail
            if any(c.offer_id == offer.id and c.redeemed_ts is not None for c in wallet.coupons):
                return Suppression.ALREADY_REDEEMED, f"already redeemed {offer.id}"
        fatigue = self.fatigue.get(request.channel)
        if fatigue is not None:
            sent = history.count(now - fatigue.period_days * DAY, channel=request.channel)
            if sent >= fatigue.count:
                return Suppression.FATIGUE_CAP, (f"{sent} contacts on {request.channel} in "
                                                 f"{fatigue.period_days:g} days (cap {fatigue.count})")
        return None, "included"

    def verdict(self, request: AudienceRequest, offer: Offer | None, profile: MemberProfile | None,
                stage: LifecycleStage | None, history: ContactHistory, wallet: Wallet,
                now: float) -> tuple[Suppression | None, str]:
        """One member's fate: the campaign's filters, then the offer's rules. Every engine decides with this."""
        why, detail = self._filter(request, profile, stage)
        if why is None:
            why, detail = self._rules(request, offer, profile, stage, history, wallet, now)  # type: ignore[arg-type]
        return why, detail

    def _chunk(self, request: AudienceRequest, scored: _Scored, rows: np.ndarray, since: float, now: float,
               sources: AudienceSources) -> tuple[int, list[tuple[Suppression | None, MemberProfile | None,
                                                                    LifecycleStage | None]]]:
        """Each member's verdict, profile and stage, in ranking order: the campaign's filters on the profiles
        (one round trip), then the offer's rules for those who pass (a second round trip, for them only)."""
        ids = scored.member_ids[rows]
        generation, profiles = sources.profiles(ids)
        member_stages = self.stages(profiles, now)
        verdicts = [self._filter(request, p, s)[0] for p, s in zip(profiles, member_stages, strict=True)]
        passing = [j for j, why in enumerate(verdicts) if why is None]
        if passing:
            states = sources.marketing([ids[j] for j in passing], since, now, scored.offer is not None)
            for j, (history, wallet) in zip(passing, states, strict=True):
                verdicts[j] = self._rules(request, scored.offer, profiles[j], member_stages[j],  # type: ignore[arg-type]
                                          history, wallet, now)[0]
        return generation, list(zip(verdicts, profiles, member_stages, strict=True))

    # --- the pull ------------------------------------------------------------------------------------
    def build(self, request: AudienceRequest, sources: AudienceSources, now: float | None = None,
              cancelled: Callable[[], bool] = lambda: False,
              progress: Callable[[int, int], None] | None = None) -> Audience:
        """The audience for `request`; `cancelled` is polled between chunks, `progress(examined, selected)`."""
        now = time.time() if now is None else now
        t0 = time.perf_counter()
        scored = self._score(request, sources, now)
        order = ranked(scored.scores)
        t_scored = time.perf_counter()
        since = self.since(request, scored.offer, now)
        counts: Counter[Suppression] = Counter()
        keep: list[np.ndarray] = []
        tiers: list[str] = []
        stages: list[str] = []
        examined, generation = 0, 0
        for start in range(0, len(order), self.chunk):
            if len(tiers) >= request.max_size:
                break
            if cancelled():
                raise AudienceCancelled(examined)
            rows = order[start:start + self.chunk]
            if request.min_score is not None:
                below = scored.scores[rows] < request.min_score
                if below.any():
                    counts[Suppression.BELOW_MIN_SCORE] += len(order) - start - int(np.argmax(below))
                    rows = rows[:int(np.argmax(below))]
            generation, verdicts = self._chunk(request, scored, rows, since, now, sources)
            chosen = np.zeros(len(rows), bool)
            for j, (why, profile, stage) in enumerate(verdicts):
                if len(tiers) >= request.max_size:
                    break
                examined += 1
                if why is not None:
                    counts[why] += 1
                    continue
                chosen[j] = True
                tiers.append(profile.tier)  # type: ignore[union-attr]
                stages.append(stage.value)  # type: ignore[union-attr]
            keep.append(rows[chosen])
            if progress is not None:
                progress(examined, len(tiers))
            if len(rows) < self.chunk and request.min_score is not None:
                break
        picked = np.concatenate(keep) if keep else np.zeros(0, np.int64)
        member_ids = scored.member_ids[picked]
        holdout = np.array([in_holdout(f"send:{request.send_id}", m, request.holdout_share) for m in member_ids],
                           bool)
        rows_out = AudienceRows(member_ids, scored.scores[picked], np.array(tiers, object),
                                np.array(stages, object), holdout) if len(picked) else AudienceRows.empty()
        return Audience(rows_out, examined, len(order), dict(counts), scored.version, generation,
                        sources.catalogue.version,
                        {"scoring": t_scored - t0, "suppression": time.perf_counter() - t_scored})

    def explain(self, request: AudienceRequest, sources: AudienceSources, member_id: str,
                now: float | None = None) -> MemberVerdict:
        """What `build` would do with one member (its score threshold and filters included), and why."""
        now = time.time() if now is None else now
        scored = self._score(request, sources, now)
        hold = in_holdout(f"send:{request.send_id}", member_id, request.holdout_share)
        hit = np.flatnonzero(scored.member_ids == member_id)
        if len(hit) == 0:
            return MemberVerdict(member_id, None, False, Suppression.NOT_SCORED,
                                 f"no score from {scored.version}", hold)
        score = float(scored.scores[hit[0]])
        if request.min_score is not None and score < request.min_score:
            return MemberVerdict(member_id, score, False, Suppression.BELOW_MIN_SCORE,
                                 f"score {score:.4f} < min_score {request.min_score:g}", hold)
        _, (profile,) = sources.profiles([member_id])
        since = self.since(request, scored.offer, now)
        ((history, wallet),) = sources.marketing([member_id], since, now, scored.offer is not None)
        (stage,) = self.stages([profile], now)
        why, detail = self.verdict(request, scored.offer, profile, stage, history, wallet, now)
        return MemberVerdict(member_id, score, why is None, why, detail, hold)
