"""What a campaign job does, in domain terms, for the RPC and the CLI alike: pull an audience, explain a
member, confirm a send; each pull and confirmation is written to the decision log (who, when, what,
versions, counts)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from omnirec.audience.builder import AudienceBuilder, AudienceCancelled, AudienceSources
from omnirec.audience.lift import Send
from omnirec.audience.model import Audience, AudienceRequest, MemberVerdict
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.vocab import Channel
from omnirec.offers.decision_log import DecisionLog, DecisionRecord, RecordType
from omnirec.offers.store import OfferStore

MAX_SEND = 10_000_000


class Campaigns:
    def __init__(self, builder: AudienceBuilder, sources: Callable[[], AudienceSources], store: OfferStore,
                 log: DecisionLog, clock: Callable[[], float] = time.time) -> None:
        self.builder = builder
        self.sources = sources
        """The model, catalogue and stores serving now (a hot reload changes them between pulls)."""
        self.store = store
        self.log = log
        self.clock = clock

    def pull(self, request: AudienceRequest, caller: str, cancelled: Callable[[], bool] = lambda: False,
             progress: Callable[[int, int], None] | None = None) -> Audience:
        """Build and log an audience; a cancelled pull is logged too (how far it got), then re-raised."""
        now = self.clock()
        sources = self.sources()
        try:
            audience = self.builder.build(request, sources, now, cancelled, progress)
        except AudienceCancelled as exc:
            self._log(request, caller, now, {"cancelled": 1, "examined": exc.examined},
                      sources.model.version if sources.model is not None else "", None, sources.catalogue.version)
            raise
        self.record(request, audience, caller, now)
        return audience

    def record(self, request: AudienceRequest, audience: Audience, caller: str, now: float) -> None:
        """Log a pull (who, when, request, versions, counts), whichever engine built it."""
        counts = {"total": len(audience.rows), "holdout": audience.holdout_count, "examined": audience.examined,
                  "scored": audience.scored, **{str(k): v for k, v in audience.suppressed.items()}}
        self._log(request, caller, now, counts, audience.model_version, audience.feature_generation,
                  audience.catalogue_version)

    def _log(self, request: AudienceRequest, caller: str, now: float, counts: dict[str, int], model_version: str,
             feature_generation: int | None, catalogue_version: str) -> None:
        self.log.append(DecisionRecord(
            ts=now, type=RecordType.AUDIENCE_PULL, decision_id=uuid.uuid4().hex, member_id="",
            channel=request.channel.value, catalogue_version=catalogue_version, model_version=model_version,
            feature_generation=feature_generation, caller=caller, send_id=request.send_id, offer_id=request.offer_id,
            request=_request_json(request), counts=counts))

    def explain(self, request: AudienceRequest, member_id: str) -> MemberVerdict:
        return self.builder.explain(request, self.sources(), member_id, self.clock())

    def confirm(self, send_id: str, offer_id: str, channel: Channel, members: Sequence[str],
                holdout: Sequence[str], caller: str, sent_at: float | None = None) -> bool:
        """Contacts into the ledger and the send into the decision log; False when it was confirmed before."""
        if not send_id:
            raise InvalidArgument("send_id", "required")
        if not members and not holdout:
            raise InvalidArgument("member_ids", "no member was sent to or held out")
        if len(members) + len(holdout) > MAX_SEND:
            raise InvalidArgument("member_ids", f"at most {MAX_SEND:,} members per send")
        overlap = set(members) & set(holdout)
        if overlap:
            raise InvalidArgument("holdout_member_ids", f"{sorted(overlap)[0]!r} is also in member_ids")
        catalogue = self.sources().catalogue
        if offer_id and catalogue.get(offer_id) is None:
            raise InvalidArgument("offer_id", f"unknown offer {offer_id!r} (catalogue {catalogue.version})")
        now = self.clock()
        if sent_at is not None and sent_at > now + 300:
            raise InvalidArgument("sent_at", "is in the future")
        new, when = self.store.confirm_send(send_id, offer_id, channel, list(members), sent_at, now)
        if new:
            self.log.append(DecisionRecord(
                ts=now, type=RecordType.CONFIRM_SEND, decision_id=send_id, member_id="", channel=channel.value,
                catalogue_version=catalogue.version, caller=caller, send_id=send_id, offer_id=offer_id,
                members=list(members), holdout_members=list(holdout), sent_at=when))
        return new


def _request_json(request: AudienceRequest) -> dict[str, object]:
    out: dict[str, Any] = asdict(request)
    out.update(channel=request.channel.value, rank_by=request.rank_by.value, tiers=sorted(request.tiers),
               stages=sorted(s.value for s in request.stages), home_stores=sorted(request.home_stores),
               regions=sorted(request.regions),
               target=None if request.target is None else request.target.model_dump(mode="json"))
    return out


def sends(records: Iterable[Mapping[str, Any]], offer_id: str | None = None, since: float = 0.0) -> list[Send]:
    """Confirmed sends in the decision log (optionally of one offer, sent at or after `since`)."""
    return [Send(r["send_id"], r["offer_id"], float(r["sent_at"]), r["members"], r["holdout_members"])
            for r in records
            if r.get("type") == RecordType.CONFIRM_SEND.value and (offer_id is None or r["offer_id"] == offer_id)
            and float(r["sent_at"]) >= since]
