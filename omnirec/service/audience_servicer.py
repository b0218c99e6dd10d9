"""AudienceService: proto <-> domain only; audiences are built by `omnirec.audience` (the CLI runs the same code).

A pull is CPU and Redis work that takes seconds, so it runs in the audience process
(`service.audience_process`), not in this worker: the worker only relays the rows. A cancelled call
closes the connection to it and the deadline travels with the request, so the work stops with the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping

import grpc

from omnirec.audience import AudienceRequest, AudienceRows, AudienceSummary, RankBy
from omnirec.audience.campaigns import MAX_SEND
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import LifecycleStage
from omnirec.offers.catalogue import Target
from omnirec.service import validation as v
from omnirec.service.audience_process import AudienceJobs
from omnirec.service.config import Role
from omnirec.service.interceptors import API_KEY_HEADER
from omnirec.service.registry import ServiceSpec
from omnirec.v1 import audience_pb2, audience_pb2_grpc

CAMPAIGN_ADMIN = frozenset({Role.CAMPAIGN, Role.ADMIN})
SERVICE = audience_pb2.DESCRIPTOR.services_by_name["AudienceService"].full_name
DEFAULT_CHUNK, MAX_CHUNK = 5_000, 50_000
_RANKING = {audience_pb2.AUDIENCE_RANKING_UNSPECIFIED: RankBy.AFFINITY,
            audience_pb2.AUDIENCE_RANKING_AFFINITY: RankBy.AFFINITY,
            audience_pb2.AUDIENCE_RANKING_UPLIFT: RankBy.UPLIFT}


def _target(spec: audience_pb2.AudienceSpec) -> Target | None:
    given = [(scope, ids) for scope, ids in (("items", spec.item_ids), ("categories", spec.category_ids),
                                             ("brands", spec.brand_ids)) if ids]
    if len(given) > 1:
        raise InvalidArgument("audience.item_ids", "give item_ids, category_ids or brand_ids, not several")
    return Target(scope=given[0][0], ids=tuple(given[0][1])) if given else None


def _stages(values: list[str]) -> frozenset[LifecycleStage]:
    try:
        return frozenset(LifecycleStage(s) for s in values)
    except ValueError:
        raise InvalidArgument("audience.lifecycle_stages", f"unknown stage in {values}; stages are "
                              f"{', '.join(s.value for s in LifecycleStage)}") from None


def audience_request(spec: audience_pb2.AudienceSpec, tiers: TierLadder) -> AudienceRequest:
    if spec.ranking not in _RANKING:
        raise InvalidArgument("audience.ranking", f"unknown ranking {spec.ranking}")
    def ids(field: str) -> frozenset[str]:
        return frozenset(v.id_list(getattr(spec, field), f"audience.{field}"))

    for field in ("item_ids", "category_ids", "brand_ids"):
        ids(field)
    request = AudienceRequest(
        channel=v.channel(spec.channel, "audience.channel"), max_size=spec.max_size,
        offer_id=v.optional_id(spec.offer_id, "audience.offer_id") or "", target=_target(spec),
        tiers=ids("tiers"), stages=_stages(list(spec.lifecycle_stages)), home_stores=ids("home_store_ids"),
        regions=ids("regions"), min_score=spec.min_score if spec.HasField("min_score") else None,
        rank_by=_RANKING[spec.ranking], holdout_share=spec.holdout_share,
        send_id=v.optional_id(spec.send_id, "audience.send_id") or "")
    with _in_spec():
        request.validate(tiers)
    return request


@contextlib.contextmanager
def _in_spec() -> Iterator[None]:
    """The domain names the spec's fields (`max_size`); on the wire they sit in `audience` (`audience.max_size`)."""
    try:
        yield
    except InvalidArgument as exc:
        raise InvalidArgument(f"audience.{exc.field}", exc.description) from None


def _header(summary: AudienceSummary, send_id: str) -> audience_pb2.StreamAudienceResponse:
    return audience_pb2.StreamAudienceResponse(header=audience_pb2.AudienceHeader(
        total=summary.total, holdout_count=summary.holdout, examined=summary.examined, scored=summary.scored,
        suppressed={str(k): n for k, n in summary.suppressed.items()}, model_version=summary.model_version,
        feature_generation=summary.feature_generation, catalogue_version=summary.catalogue_version,
        send_id=send_id))


def _chunk(rows: AudienceRows) -> audience_pb2.StreamAudienceResponse:
    return audience_pb2.StreamAudienceResponse(chunk=audience_pb2.AudienceChunk(
        member_ids=rows.member_ids.tolist(), scores=rows.scores.tolist(), ranks=rows.ranks.tolist(),
        tiers=rows.tiers.tolist(), lifecycle_stages=rows.stages.tolist(), holdout=rows.holdout.tolist()))


class AudienceServicer(audience_pb2_grpc.AudienceServiceServicer):
    def __init__(self, jobs: AudienceJobs, tiers: TierLadder, api_keys: Mapping[str, Role]) -> None:
        self._jobs = jobs
        self._tiers = tiers
        self._api_keys = dict(api_keys)

    def _caller(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's role (the interceptor has already checked the key) for the decision log."""
        key = next((val for k, val in context.invocation_metadata() or () if k == API_KEY_HEADER), None)
        role = self._api_keys.get(key) if isinstance(key, str) else None
        return role.value if role is not None else "unknown"

    async def StreamAudience(self, request: audience_pb2.StreamAudienceRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[audience_pb2.StreamAudienceResponse]:
        spec = audience_request(request.audience, self._tiers)
        chunk = request.chunk_size or DEFAULT_CHUNK
        if not 1 <= chunk <= MAX_CHUNK:
            raise InvalidArgument("chunk_size", f"must be between 1 and {MAX_CHUNK:,} (got {chunk})")
        stream = self._jobs.pull(spec, self._caller(context), context.time_remaining(), chunk)
        async with contextlib.aclosing(stream):  # a cancelled call closes it: the audience process stops
            with _in_spec():
                summary = await anext(stream)
            yield _header(summary, spec.send_id)  # type: ignore[arg-type]
            async for rows in stream:
                yield _chunk(rows)  # type: ignore[arg-type]

    async def ExplainAudienceMember(self, request: audience_pb2.ExplainAudienceMemberRequest,
                                    context: grpc.aio.ServicerContext) -> audience_pb2.ExplainAudienceMemberResponse:
        spec = audience_request(request.audience, self._tiers)
        member_id = v.required(request.member_id, "member_id")
        with _in_spec():
            verdict = await self._jobs.explain(spec, member_id)
        return audience_pb2.ExplainAudienceMemberResponse(
            member_id=member_id, scored=verdict.score is not None, score=verdict.score or 0.0,
            included=verdict.included, suppression=verdict.suppression.value if verdict.suppression else "",
            detail=verdict.detail, holdout=verdict.holdout)

    async def ConfirmSend(self, request: audience_pb2.ConfirmSendRequest,
                          context: grpc.aio.ServicerContext) -> audience_pb2.ConfirmSendResponse:
        send_id = v.required(request.send_id, "send_id")
        channel = v.channel(request.channel)
        sent_at = v.unix_seconds(request.sent_at, "sent_at") if request.HasField("sent_at") else None
        offer_id = v.optional_id(request.offer_id, "offer_id") or ""
        members = v.id_list(request.member_ids, "member_ids", max_len=MAX_SEND)
        holdout = v.id_list(request.holdout_member_ids, "holdout_member_ids", max_len=MAX_SEND)
        new = await self._jobs.confirm(send_id, offer_id, channel, members, holdout, self._caller(context), sent_at)
        return audience_pb2.ConfirmSendResponse(replayed=not new, contacts_recorded=len(request.member_ids))


def spec(jobs: AudienceJobs, tiers: TierLadder, api_keys: Mapping[str, Role]) -> ServiceSpec:
    return ServiceSpec.of(audience_pb2, "AudienceService", audience_pb2_grpc.add_AudienceServiceServicer_to_server,
                          AudienceServicer(jobs, tiers, api_keys),
                          {"StreamAudience": CAMPAIGN_ADMIN, "ExplainAudienceMember": CAMPAIGN_ADMIN,
                           "ConfirmSend": CAMPAIGN_ADMIN})
