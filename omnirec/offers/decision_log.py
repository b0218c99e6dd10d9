"""Append-only decision log: one JSON object per line, one file per UTC day, for audit and later learning.

Each record is written with a single `write` on a file opened with O_APPEND, so lines from several
threads or worker processes never interleave on a local filesystem. The service never deletes or
rewrites a file; retention is the operator's choice (the files are small and compress well; keep at
least as long as the longest campaign plus its measurement window, so holdout lift can be computed).
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from omnirec.offers.policy import Exclusion, MemberView, ScoredOffer


class RecordType(StrEnum):
    NEXT_BEST_OFFER = "next_best_offer"
    DECIDE_COUPON = "decide_coupon"
    REDEEM_COUPON = "redeem_coupon"
    AUDIENCE_PULL = "audience_pull"
    CONFIRM_SEND = "confirm_send"


@dataclass(frozen=True)
class DecisionRecord:
    """One line of the log. Every RPC that decides or books something writes one; fields a type does not
    use keep their defaults and are left out of the line."""

    ts: float
    type: RecordType
    decision_id: str
    member_id: str
    channel: str | None = None
    store_id: str | None = None
    catalogue_version: str = ""
    model_version: str = ""
    uplift_version: str = ""
    member: MemberView | None = None
    basket: Sequence[str] = ()
    context: Mapping[str, str] = field(default_factory=dict)
    scored: Sequence[ScoredOffer] = ()
    excluded: Sequence[Exclusion] = ()
    chosen: Sequence[str] = ()
    """NextBestOffer: the offers answered, best first."""
    decision: Mapping[str, object] = field(default_factory=dict)
    """DecideCoupon: the decision as the caller got it (issued, coupon_id, offer_id, reason, detail, score)."""
    request_id: str = ""
    basket_value: float | None = None
    coupon_id: str = ""
    offer_id: str = ""
    redemption_id: str = ""
    order_value: float | None = None
    discount: float | None = None
    caller: str = ""
    """Audiences: the role that pulled or confirmed (campaign, admin)."""
    send_id: str = ""
    request: Mapping[str, object] = field(default_factory=dict)
    """Audience pull: the request as the domain saw it."""
    counts: Mapping[str, int] = field(default_factory=dict)
    """Audience pull: total, holdout, examined, scored and members kept out per rule."""
    feature_generation: int | None = None
    members: Sequence[str] = ()
    """Confirmed send: members contacted."""
    holdout_members: Sequence[str] = ()
    """Confirmed send: the carve-out, not contacted (the control group of `omnirec lift`)."""
    sent_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": self.ts, "type": self.type.value, "decision_id": self.decision_id,
                               "member_id": self.member_id, "channel": self.channel, "store_id": self.store_id,
                               "catalogue_version": self.catalogue_version}
        if self.type in (RecordType.AUDIENCE_PULL, RecordType.CONFIRM_SEND):
            out.update(caller=self.caller, send_id=self.send_id, offer_id=self.offer_id)
            if self.type is RecordType.AUDIENCE_PULL:
                out.update(model_version=self.model_version, feature_generation=self.feature_generation,
                           request=dict(self.request), counts=dict(self.counts))
            else:
                out.update(members=list(self.members), holdout_members=list(self.holdout_members),
                           sent_at=self.sent_at)
            return out
        if self.type is not RecordType.REDEEM_COUPON:
            out.update(model_version=self.model_version, uplift_version=self.uplift_version,
                       basket=list(self.basket), scored=[_scored(s) for s in self.scored],
                       excluded=[{"offer_id": e.offer_id, "rule": e.rule.value} for e in self.excluded])
            if self.member is not None:
                out["member"] = {"tier": self.member.tier, "stage": self.member.stage.value,
                                 "consent": sorted(c.value for c in self.member.consent),
                                 "feature_version": self.member.feature_version}
        if self.type is RecordType.NEXT_BEST_OFFER:
            out.update(context=dict(self.context), chosen=list(self.chosen))
        elif self.type is RecordType.DECIDE_COUPON:
            out.update(request_id=self.request_id, basket_value=self.basket_value, **self.decision)
        else:
            out.update(coupon_id=self.coupon_id, offer_id=self.offer_id, redemption_id=self.redemption_id,
                       order_value=self.order_value, discount=self.discount)
        return out


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _scored(s: ScoredOffer) -> dict[str, object]:
    return {"offer_id": s.offer.id, "score": round(s.score, 6), "propensity": round(s.propensity, 6),
            "uplift": round(s.uplift, 6), "reasons": list(s.reasons)}


class DecisionLog:
    """Appends to the current day's file through a descriptor kept open (O_APPEND): opening and closing the
    file per record cost a decision more than writing it. The descriptor is reopened when the day changes
    or when the file it points to was deleted (nothing is written into an unlinked file)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._day = ""
        self._fd = -1
        self._closer: weakref.finalize | None = None

    def path_for(self, ts: float) -> Path:
        return self.directory / f"decisions-{_day(ts)}.jsonl"

    def append(self, record: DecisionRecord) -> None:
        """The record's `ts` picks the day file."""
        line = (json.dumps(record.to_json(), separators=(",", ":"), sort_keys=True) + "\n").encode()
        day = _day(record.ts)
        with self._lock:
            if day != self._day or os.fstat(self._fd).st_nlink == 0:
                self._open(day)
            os.write(self._fd, line)

    def _open(self, day: str) -> None:
        fd = os.open(self.directory / f"decisions-{day}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.close()
        self._day, self._fd = day, fd
        self._closer = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer, self._day, self._fd = None, "", -1

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record, oldest day first (for audits, tests and training the next uplift model)."""
        for path in sorted(self.directory.glob("decisions-*.jsonl")):
            with path.open() as f:
                for line in f:
                    yield json.loads(line)
