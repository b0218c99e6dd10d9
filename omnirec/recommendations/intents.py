"""Buy-again, discover and the next-basket list: the precomputed lists corrected by live purchases, or,
for members without lists, answers built from the member's purchases at request time.

The two-stage ranker (`omnirec train`) writes each member's lists as of `Bundle.lists_as_of`; purchases
the feature store recorded after that are what the lists could not see, so they are applied here, per
request, from the member's purchased list (item -> last purchase time, one read):

* an item bought since, and not due again (less than `NOT_DUE` of its repurchase cycle ago), leaves
  `BUY_AGAIN` and `MIXED`; one bought since but not yet a full cycle ago (or of unknown cycle) moves to
  the end;
* `DISCOVER` never holds an item the member bought, ever;
* complements of the purchases made since the lists (`Bundle.basket_complements`) are fused into
  `DISCOVER` and `MIXED` by reciprocal rank fusion, so a new purchase shifts the list within seconds.

Everything is vectorised over a list of at most a few hundred items; no Python loop over the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnirec.domain.clock import DAY
from omnirec.domain.vocab import Intent
from omnirec.recommendations.ranking import Bundle, CategoryIndex, Filters, MemberContext, Ranked, Reason, isin

NOT_DUE = 0.5
"""An item bought less than this share of its repurchase cycle ago is not due again: it leaves the list."""
FUSION_K = 60
"""Reciprocal rank fusion's constant (Cormack et al., SIGIR 2009): scores 1 / (FUSION_K + rank)."""
LIVE_BASKET = 20
"""Most recent purchases since the lists whose complements are fused in (bounds the per-request cost)."""
LIST_REASONS = {Intent.MIXED: Reason.NEXT_BASKET, Intent.BUY_AGAIN: Reason.BUY_AGAIN,
                Intent.DISCOVER: Reason.DISCOVER}


@dataclass(frozen=True)
class Purchases:
    """A member's purchases as bundle item indexes (items the bundle lacks left out), most recent first."""

    idx: np.ndarray
    ts: np.ndarray
    """Unix seconds of each item's last purchase."""

    @classmethod
    def of(cls, bundle: Bundle, member: MemberContext) -> Purchases:
        idx = bundle.items.to_internal(member.purchased, strict=False)
        ts = np.fromiter(member.purchased.values(), dtype=np.float64, count=len(idx))
        known = idx >= 0
        return cls(idx, ts) if known.all() else cls(idx[known], ts[known])

    def since(self, ts: float | None) -> Purchases:
        """The purchases after `ts` (all of them when None: nothing precomputed saw any)."""
        if ts is None:
            return self
        later = self.ts > ts
        return Purchases(self.idx[later], self.ts[later])


def due(bundle: Bundle, purchases: Purchases, now: float) -> np.ndarray:
    """Repurchase cycles elapsed since each item's last purchase; NaN where the bundle knows no cycle."""
    return (now - purchases.ts) / DAY / bundle.cycle_days(purchases.idx)


def _allowed(categories: CategoryIndex, idx: np.ndarray, filters: Filters) -> tuple[np.ndarray, list[Reason]]:
    keep = categories.allowed(idx)
    if filters.category:
        keep &= categories.mask(filters.category)[idx]
        return keep, [Reason.CATEGORY_FILTER]
    return keep, []


def _reasons(n: int, reason: Reason) -> np.ndarray:
    """An object array of `n` times `reason` (`np.full` would store it as a plain str)."""
    out = np.empty(n, dtype=object)
    out[:] = reason
    return out


def _ranked(idx: np.ndarray, scores: np.ndarray, reasons: np.ndarray, keep: np.ndarray,
            applied: list[Reason]) -> Ranked:
    sel = np.flatnonzero(keep)
    return Ranked(idx[sel], np.asarray(scores, dtype=np.float32)[sel], reasons[sel].tolist(), applied)


def _fuse_complements(bundle: Bundle, idx: np.ndarray, reasons: np.ndarray, live: Purchases,
                      n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The list and the complements of the live purchases, by reciprocal rank fusion (best first)."""
    basket = bundle.items.to_external(live.idx[:LIVE_BASKET]).tolist()
    found, _ = bundle.basket_complements(basket, max(n, len(idx)))
    found = np.asarray(found, dtype=np.int64)
    union, inverse = np.unique(np.concatenate([idx, found]), return_inverse=True)
    fused = np.zeros(len(union))
    np.add.at(fused, inverse[:len(idx)], 1.0 / (FUSION_K + 1 + np.arange(len(idx))))
    np.add.at(fused, inverse[len(idx):], 1.0 / (FUSION_K + 1 + np.arange(len(found))))
    why = _reasons(len(union), Reason.BASKET_COMPLEMENT)
    why[inverse[:len(idx)]] = reasons
    order = np.argsort(-fused, kind="stable")
    return union[order], fused[order], why[order]


def _demote(scores: np.ndarray, later: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, scores) with the `later` entries after all others, each group in its own order, and their
    scores lowered below every other score so the list stays best first."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    scores[later] -= scores.max() - scores.min() + 1.0
    return np.concatenate([np.flatnonzero(~later), np.flatnonzero(later)]), scores


def from_lists(bundle: Bundle, categories: CategoryIndex, member: MemberContext, intent: Intent,
               found: tuple[np.ndarray, np.ndarray], filters: Filters, now: float,
               n: int) -> tuple[Ranked, np.ndarray]:
    """A precomputed list (`Bundle.intent_top`) with the purchases made since it was computed applied, and
    the items left out as not due again (so nothing that tops the list up brings them back)."""
    idx, scores = np.asarray(found[0], dtype=np.int64), np.asarray(found[1], dtype=np.float64)
    reasons = _reasons(len(idx), LIST_REASONS[intent])
    bought = Purchases.of(bundle, member)
    live = bought.since(bundle.lists_as_of)
    if intent is not Intent.BUY_AGAIN and len(live.idx):
        idx, scores, reasons = _fuse_complements(bundle, idx, reasons, live, n)
    keep, applied = _allowed(categories, idx, filters)
    later = np.zeros(len(idx), bool)
    not_due = np.zeros(0, np.int64)
    if intent is Intent.DISCOVER or filters.exclude_purchased:
        keep &= ~isin(idx, bought.idx)
        if filters.exclude_purchased:  # unset when the purchases could not be read (degraded)
            applied = [*applied, Reason.EXCLUDED_PURCHASED]
    elif len(live.idx):
        ratio, cycles = np.full(len(idx), np.inf), due(bundle, live, now)
        order = np.argsort(live.idx)
        pos = np.clip(np.searchsorted(live.idx[order], idx), 0, len(order) - 1)
        hit = live.idx[order][pos] == idx
        ratio[hit] = cycles[order][pos[hit]]
        not_due = live.idx[cycles < NOT_DUE]
        keep &= ~isin(idx, not_due)
        later = hit & ~(ratio >= 1.0)
    later &= keep
    if later.any():
        order, scores = _demote(scores, later)
        idx, scores, reasons, keep = idx[order], scores[order], reasons[order], keep[order]
    return _ranked(idx, scores, reasons, keep, applied), not_due


def buy_again(bundle: Bundle, categories: CategoryIndex, member: MemberContext, filters: Filters,
              now: float) -> Ranked:
    """The member's purchased items, most due first (cycles elapsed since the last purchase), those not due
    again left out; by recency (most recent first) when the bundle knows no repurchase cycles."""
    bought = Purchases.of(bundle, member)
    ratio = due(bundle, bought, now)
    if np.isnan(ratio).all():
        scores, keep = -(now - bought.ts) / DAY, np.ones(len(ratio), bool)
    else:
        scores, keep = ratio, ratio >= NOT_DUE
    allowed, applied = _allowed(categories, bought.idx, filters)
    order = np.argsort(-scores, kind="stable")
    reasons = _reasons(len(order), Reason.BUY_AGAIN)
    return _ranked(bought.idx[order], scores[order], reasons, (keep & allowed)[order], applied)


def nothing_due(member: MemberContext) -> str:
    """Why a buy-again answer is empty, before any other filter."""
    if not member.member_id:
        return "buy again: an anonymous visitor not linked to a member has no purchases"
    if not member.purchased:
        return "buy again: the member has no purchases in the feature store"
    return (f"buy again: none of the member's {len(member.purchased)} purchased items is due again yet "
            f"(each was bought less than {NOT_DUE:.0%} of its repurchase cycle ago)")


def merge(first: Ranked, then: Ranked, n: int, left_out: np.ndarray) -> Ranked:
    """`first`, then the items of `then` it lacks (and not `left_out`), at most n; `then`'s scores are lowered
    below `first`'s so the answer stays best first. Filters count only when both applied them."""
    if len(first.idx) >= n or not len(then.idx):
        return first.head(n)
    fresh = np.flatnonzero(~isin(then.idx, first.idx) & ~isin(then.idx, left_out))[:n - len(first.idx)]
    tail = np.asarray(then.scores, dtype=np.float64)[fresh]
    if len(first.idx) and len(tail):
        tail = tail - tail.max() + float(first.scores.min()) - 1.0
    applied = [r for r in first.applied if r in then.applied] if len(first.idx) else then.applied
    return Ranked(np.concatenate([first.idx, then.idx[fresh]]),
                  np.concatenate([first.scores, tail.astype(np.float32)]),
                  [*first.reasons, *(then.reasons[i] for i in fresh.tolist())], applied)
