"""Build an audience: score every member, then walk them best first through the campaign's filters and the
offer rules until the audience is full.

Suppression uses `offers.policy.screen` and the same contact ledger as NextBestOffer and DecideCoupon, so
a member is never treated differently by a campaign and by the app. Stores are read a chunk of members
at a time (one pipelined round trip per store per chunk), and only as far down the ranking as the
audience needs: the summary counts are over the members examined.

A chunk is decided column-wise: its profiles and ledgers decoded in bulk (`ProfileColumns`,
`ContactColumns`), the campaign's filters, lifecycle stages, contact counts and fatigue as array
operations; only an offer's `screen` runs per member, for those who pass the filters. `verdict` (one
member: explain mode, the Spark engine) decides with the same rules member by member, and
`tests/audience/test_builder.py` checks that both give every member the same fate.
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
from omnirec.feature_store.model import CHANNELS, MemberProfile, ProfileColumns
from omnirec.offers.catalogue import Cap, Catalogue, Offer, Target
from omnirec.offers.policy import Exclusion, MemberView, OfferState, in_holdout, screen
from omnirec.offers.store import ContactColumns, ContactHistory, Wallet
from omnirec.offers.uplift import UpliftScores

ProfileReader = Callable[[Sequence[str]], tuple[int, list[MemberProfile | None]]]
"""Profiles of many members in one round trip, with the feature generation they were read from."""
MarketingReader = Callable[[Sequence[str], float, float, bool], list[tuple[ContactHistory, Wallet]]]
"""(member ids, contacts since, now, wallets too) -> each member's contact history and wallet (empty unless
asked: only an offer's `already_redeemed` rule needs it), in one round trip."""
ProfileColumnsReader = Callable[[Sequence[str]], tuple[int, ProfileColumns]]
"""`ProfileReader`, column-wise."""
LedgerReader = Callable[[Sequence[str], float, float, bool], tuple[ContactColumns, Sequence[Wallet]]]
"""`MarketingReader`, the contacts column-wise."""

_OUTCOMES: tuple[Suppression | None, ...] = (None, *Suppression)
"""A chunk's verdicts as small integers: 0 is included, else the index of the `Suppression`."""
_CODE = {why: i for i, why in enumerate(_OUTCOMES)}
_STAGE_NAMES = np.array([s.value for s in STAGES], object)


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
    profile_columns: ProfileColumnsReader | None = None
    """A chunk's profiles column-wise (None: `profiles`, then converted)."""
    ledger: LedgerReader | None = None
    """A chunk's marketing state with the contacts column-wise (None: `marketing`, then converted)."""

    def read_profiles(self, member_ids: Sequence[str]) -> tuple[int, ProfileColumns]:
        if self.profile_columns is not None:
            return self.profile_columns(member_ids)
        generation, profiles = self.profiles(member_ids)
        return generation, ProfileColumns.from_profiles(member_ids, profiles)

    def read_ledger(self, member_ids: Sequence[str], since: float, now: float,
                    wallets: bool) -> tuple[ContactColumns, Sequence[Wallet]]:
        if self.ledger is not None:
            return self.ledger(member_ids, since, now, wallets)
        states = self.marketing(member_ids, since, now, wallets)
        return ContactColumns.of([h for h, _ in states], since), [w for _, w in states]


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
               sources: AudienceSources) -> tuple[int, np.ndarray, ProfileColumns, np.ndarray]:
        """(generation, each member's verdict code, profiles, stage codes), in ranking order: the campaign's
        filters on the profiles (one round trip), then the offer's rules and fatigue for those who pass (a
        second round trip, for them only)."""
        ids = scored.member_ids[rows]
        generation, profiles = sources.read_profiles(ids)
        stage = lifecycle_stages(self.lifecycle, now, profiles.signup_ts, profiles.last_purchase_ts,
                                 profiles.prev_purchase_ts)
        why = np.zeros(len(ids), np.int8)
        for fails, rule in reversed(self._filters(request, profiles, stage)):  # the first filter failed wins
            why[fails] = _CODE[rule]
        passing = np.flatnonzero(why == 0)
        if len(passing):
            contacts, wallets = sources.read_ledger(ids[passing], since, now, scored.offer is not None)
            why[passing] = self._rule_codes(request, scored.offer, profiles, stage, passing, contacts, wallets, now)
        return generation, why, profiles, stage

    @staticmethod
    def _filters(request: AudienceRequest, profiles: ProfileColumns,
                 stage: np.ndarray) -> list[tuple[np.ndarray, Suppression]]:
        """`_filter` for a chunk: each filter's failures, in `_filter`'s order."""
        def outside(values: np.ndarray, allowed: frozenset[str]) -> np.ndarray:
            inside = np.zeros(len(values), bool)
            for value in allowed:
                inside |= values == value
            return ~inside

        checks = [(~profiles.present, Suppression.NO_PROFILE)]
        if request.tiers:
            checks.append((outside(profiles.tier, request.tiers), Suppression.FILTERED_TIER))
        if request.stages:
            codes = [STAGES.index(s) for s in request.stages]
            checks.append((~np.isin(stage, codes), Suppression.FILTERED_STAGE))
        if request.home_stores:
            checks.append((outside(profiles.home_store, request.home_stores), Suppression.FILTERED_STORE))
        if request.regions:
            checks.append((outside(profiles.region, request.regions), Suppression.FILTERED_REGION))
        checks.append((~profiles.consent[request.channel], Suppression.NO_CONSENT))
        return checks

    def _rule_codes(self, request: AudienceRequest, offer: Offer | None, profiles: ProfileColumns, stage: np.ndarray,
                    rows: np.ndarray, contacts: ContactColumns, wallets: Sequence[Wallet], now: float) -> np.ndarray:
        """`_rules` for the chunk's `rows` (which passed the filters): the offer's `screen`, then already
        redeemed, then fatigue, with the contact counts over all of them at once."""
        why = np.zeros(len(rows), np.int8)
        if offer is not None:
            cap = offer.per_member_cap
            capped = (contacts.count(now - cap.period_days * DAY, offer_id=offer.id) if cap
                      else np.zeros(len(rows), np.int64))
            why = self._screen_codes(request, offer, profiles, stage, rows, capped, now)
            for j in np.flatnonzero(why == 0).tolist():
                if any(c.offer_id == offer.id and c.redeemed_ts is not None for c in wallets[j].coupons):
                    why[j] = _CODE[Suppression.ALREADY_REDEEMED]
        fatigue = self.fatigue.get(request.channel)
        if fatigue is not None:
            sent = contacts.count(now - fatigue.period_days * DAY, channel=request.channel)
            why[(why == 0) & (sent >= fatigue.count)] = _CODE[Suppression.FATIGUE_CAP]
        return why

    def _screen_codes(self, request: AudienceRequest, offer: Offer, profiles: ProfileColumns, stage: np.ndarray,
                      rows: np.ndarray, capped: np.ndarray, now: float) -> np.ndarray:
        """`screen`'s verdict on each of `rows`, run once per group of members it cannot tell apart. It sees a
        member as a `MemberView` and an `OfferState`, and uses the member's id only for the offer's holdout
        (`in_holdout(offer.id, member_id, offer.holdout_share)`): members alike in tier, stage, consents,
        contacts of the offer and holdout assignment get the same verdict (`tests/audience/test_bulk_decoding.py`
        holds `screen` to that), so a chunk of thousands runs it a few dozen times."""
        members = profiles.member_ids[rows].tolist()
        mask = np.zeros(len(rows), np.int64)
        for bit, channel in enumerate(CHANNELS):
            mask |= profiles.consent[channel][rows].astype(np.int64) << bit
        consents = {m: frozenset(c for bit, c in enumerate(CHANNELS) if m >> bit & 1) for m in np.unique(mask).tolist()}
        held = ([in_holdout(offer.id, m, offer.holdout_share) for m in members] if offer.holdout_share > 0
                else [False] * len(members))
        verdicts: dict[tuple[str, int, int, int, bool], int] = {}
        why = np.zeros(len(rows), np.int8)
        for j, group in enumerate(zip(profiles.tier[rows].tolist(), stage[rows].tolist(), mask.tolist(),
                                      capped.tolist(), held, strict=True)):
            code = verdicts.get(group)
            if code is None:
                tier, stage_code, consent, contacts, _ = group
                verdict = screen(offer, MemberView(members[j], tier, STAGES[stage_code], consents[consent]),
                                 request.channel, now, OfferState(member_contacts=contacts), self.tiers)
                code = verdicts[group] = _CODE[Suppression(verdict.rule.value)] if isinstance(verdict, Exclusion) else 0
            why[j] = code
        return why

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
        tiers: list[np.ndarray] = []
        stages: list[np.ndarray] = []
        examined, selected, generation = 0, 0, 0
        for start in range(0, len(order), self.chunk):
            if selected >= request.max_size:
                break
            if cancelled():
                raise AudienceCancelled(examined)
            rows = order[start:start + self.chunk]
            if request.min_score is not None:
                below = scored.scores[rows] < request.min_score
                if below.any():
                    counts[Suppression.BELOW_MIN_SCORE] += len(order) - start - int(np.argmax(below))
                    rows = rows[:int(np.argmax(below))]
            generation, why, profiles, stage = self._chunk(request, scored, rows, since, now, sources)
            included = why == 0
            taken = np.cumsum(included)
            end = len(rows)
            if len(rows) and taken[-1] > request.max_size - selected:  # full within this chunk
                end = int(np.searchsorted(taken, request.max_size - selected)) + 1
            examined += end
            codes, n = np.unique(why[:end], return_counts=True)
            counts.update({_OUTCOMES[c]: k for c, k in zip(codes.tolist(), n.tolist(), strict=True) if c})
            chosen = np.flatnonzero(included[:end])
            selected += len(chosen)
            keep.append(rows[chosen])
            tiers.append(profiles.tier[chosen])
            stages.append(_STAGE_NAMES[stage[chosen]])
            if progress is not None:
                progress(examined, selected)
            if len(rows) < self.chunk and request.min_score is not None:
                break
        picked = np.concatenate(keep) if keep else np.zeros(0, np.int64)
        member_ids = scored.member_ids[picked]
        holdout = np.array([in_holdout(f"send:{request.send_id}", m, request.holdout_share) for m in member_ids],
                           bool)
        rows_out = AudienceRows(member_ids, scored.scores[picked], np.concatenate(tiers).astype(object),
                                np.concatenate(stages).astype(object), holdout) if len(picked) else AudienceRows.empty()
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
