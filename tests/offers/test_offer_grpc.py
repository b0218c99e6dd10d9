"""OfferService through a real grpc.aio server (auth and error interceptors), a real client and real Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from omnirec.domain.vocab import LifecycleStage
from omnirec.offers.engine import OfferEngine
from omnirec.offers.policy import in_holdout
from omnirec.service import offer_servicer
from omnirec.service.config import Role
from omnirec.service.interceptors import ApiInterceptor
from omnirec.v1 import common_pb2, offers_pb2, offers_pb2_grpc
from tests.offers.conftest import EXAMPLE, EngineFactory, member

KEYS = {"app-key": Role.APP, "pos-key": Role.POS, "campaign-key": Role.CAMPAIGN}
MEMBER = next(f"m{i}" for i in range(100) if not in_holdout("winback-15off60", f"m{i}", 0.1))


class Server:
    def __init__(self, engine: OfferEngine) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, port = asyncio.run_coroutine_threadsafe(self._start(engine), self.loop).result(10)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = offers_pb2_grpc.OfferServiceStub(self.channel)

    async def _start(self, engine: OfferEngine) -> tuple[grpc.aio.Server, int]:
        spec = offer_servicer.spec(engine, default_deadline_s=5.0)
        server = grpc.aio.server(interceptors=[ApiInterceptor(KEYS, spec.method_roles)])
        spec.add_to_server(spec.servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    def stop(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server(make_engine: EngineFactory) -> Iterator[Server]:
    running = Server(make_engine([member(MEMBER, "silver", LifecycleStage.AT_RISK), member("other", "silver")]))
    yield running
    running.stop()


def key(name: str) -> list[tuple[str, str]]:
    return [("x-api-key", name)]


def test_next_best_offer_decide_and_redeem(server: Server) -> None:
    ask = offers_pb2.NextBestOfferRequest(member_id=MEMBER, channel=common_pb2.CHANNEL_APP, k=3, explain=True,
                                          context={"page": "home"})
    for _ in range(3):  # previews record nothing
        preview = server.stub.NextBestOffer(ask, metadata=key("campaign-key"))
    ask.shown = True
    nbo = server.stub.NextBestOffer(ask, metadata=key("campaign-key"))
    assert [o.offer_id for o in nbo.offers] == [o.offer_id for o in preview.offers]
    assert nbo.decision_id and nbo.catalogue_version and nbo.degraded
    assert nbo.degraded_reason == "no model serving: affinities are neutral"
    assert 1 <= len(nbo.offers) <= 3
    assert "winback-15off60" in [o.offer_id for o in nbo.offers]
    assert all(o.reasons and o.score > 0 for o in nbo.offers)
    excluded = {e.offer_id: e.rule for e in nbo.excluded}
    assert excluded["gold-gift-electronics"] == "not_eligible_tier"
    assert excluded["welcome-10off50"] == "not_eligible_lifecycle"

    request = offers_pb2.DecideCouponRequest(request_id="checkout-1", member_id=MEMBER, channel=common_pb2.CHANNEL_APP,
                                             basket_item_ids=["i4"], basket_value_minor_units=8000)
    decision = server.stub.DecideCoupon(request, metadata=key("pos-key"))
    assert decision.issued and decision.coupon_id
    assert decision.offer_id != "winback-15off60"  # shown by NextBestOffer above: its cap of 1 is used
    assert decision.reason == offers_pb2.COUPON_REASON_ISSUED and not decision.replayed
    retry = server.stub.DecideCoupon(request, metadata=key("pos-key"))
    assert retry.replayed and retry.coupon_id == decision.coupon_id and retry.decision_id == decision.decision_id
    request.member_id = "other"  # the same request id for another member: refused, never MEMBER's coupon
    with pytest.raises(grpc.RpcError) as info:
        server.stub.DecideCoupon(request, metadata=key("pos-key"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request_id: 'checkout-1' was already used for a different request")

    redeem = offers_pb2.RedeemCouponRequest(coupon_id=decision.coupon_id, member_id=MEMBER,
                                            order_value_minor_units=9000, channel=common_pb2.CHANNEL_POS,
                                            store_id="s1")
    first = server.stub.RedeemCoupon(redeem, metadata=key("app-key"))
    again = server.stub.RedeemCoupon(redeem, metadata=key("app-key"))
    assert first.newly_redeemed and not again.newly_redeemed
    assert first.offer_id == again.offer_id == decision.offer_id


INVALID = [
    (offers_pb2.NextBestOfferRequest(member_id="m1", channel=common_pb2.CHANNEL_APP, k=0), "k"),
    (offers_pb2.NextBestOfferRequest(member_id="m1", channel=common_pb2.CHANNEL_APP, k=21), "k"),
    (offers_pb2.NextBestOfferRequest(channel=common_pb2.CHANNEL_APP, k=3), "member_id"),
    (offers_pb2.NextBestOfferRequest(member_id="m1", k=3), "channel"),
    (offers_pb2.DecideCouponRequest(member_id="m1", channel=common_pb2.CHANNEL_APP), "request_id"),
    (offers_pb2.DecideCouponRequest(request_id="r", member_id="m1", channel=common_pb2.CHANNEL_POS), "store_id"),
    (offers_pb2.DecideCouponRequest(request_id="r", member_id="m1", channel=common_pb2.CHANNEL_APP,
                                    basket_value_minor_units=-1), "basket_value_minor_units"),
    (offers_pb2.RedeemCouponRequest(member_id="m1"), "coupon_id"),
]


def test_invalid_argument_names_the_field(server: Server) -> None:
    methods = {offers_pb2.NextBestOfferRequest: server.stub.NextBestOffer,
               offers_pb2.DecideCouponRequest: server.stub.DecideCoupon,
               offers_pb2.RedeemCouponRequest: server.stub.RedeemCoupon}
    for request, field in INVALID:
        with pytest.raises(grpc.RpcError) as info:
            methods[type(request)](request, metadata=key("app-key"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert info.value.details().startswith(f"{field}:"), info.value.details()


def test_roles_and_unknown_ids(server: Server) -> None:
    decide = offers_pb2.DecideCouponRequest(request_id="r", member_id=MEMBER, channel=common_pb2.CHANNEL_APP)
    with pytest.raises(grpc.RpcError) as info:
        server.stub.DecideCoupon(decide, metadata=key("campaign-key"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as info:
        server.stub.DecideCoupon(decide)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        server.stub.NextBestOffer(offers_pb2.NextBestOfferRequest(member_id="ghost", channel=common_pb2.CHANNEL_WEB,
                                                                  k=2), metadata=key("app-key"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        redeem = offers_pb2.RedeemCouponRequest(coupon_id="nope", member_id=MEMBER, channel=common_pb2.CHANNEL_APP)
        server.stub.RedeemCoupon(redeem, metadata=key("pos-key"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_64_concurrent_decide_coupon_calls_stay_within_budget(make_engine: EngineFactory, tmp_path: Path) -> None:
    path = tmp_path / "tight.toml"
    path.write_text(EXAMPLE.read_text().replace("budget = { max_count = 10000, max_money = 50000 }",
                                                "budget = { max_count = 5 }"))
    members = [f"c{i}" for i in range(64)]
    running = Server(make_engine([member(m, "basic", LifecycleStage.ACTIVE) for m in members], path))
    try:
        calls = [running.stub.DecideCoupon.future(offers_pb2.DecideCouponRequest(
            request_id=f"r-{m}", member_id=m, channel=common_pb2.CHANNEL_APP), metadata=key("app-key"))
            for m in members]
        decisions = [c.result(timeout=30) for c in calls]
    finally:
        running.stop()
    issued = [d for d in decisions if d.issued]
    held = [m for m in members if in_holdout("kitchen-5off25", m, 0.1)]
    assert len(issued) == 5 and {d.offer_id for d in issued} == {"kitchen-5off25"}
    reasons = {d.reason for d in decisions if not d.issued}
    assert reasons <= {offers_pb2.COUPON_REASON_BUDGET_EXHAUSTED, offers_pb2.COUPON_REASON_HOLDOUT}
    assert sum(d.reason == offers_pb2.COUPON_REASON_HOLDOUT for d in decisions) == len(held)


def test_without_materialised_features_next_best_offer_degrades_and_decide_coupon_is_unavailable(
        make_engine: EngineFactory, redis_client: redis.Redis, redis_prefix: str) -> None:
    running = Server(make_engine([member(MEMBER)]))
    try:
        for k in redis_client.scan_iter(match=f"{redis_prefix}*"):  # an emptied Redis
            redis_client.delete(k)
        nbo = running.stub.NextBestOffer(offers_pb2.NextBestOfferRequest(
            member_id=MEMBER, channel=common_pb2.CHANNEL_APP, k=3, shown=True), metadata=key("app-key"))
        assert nbo.degraded and not nbo.offers and "no materialised features" in nbo.degraded_reason
        with pytest.raises(grpc.RpcError) as info:
            running.stub.DecideCoupon(offers_pb2.DecideCouponRequest(
                request_id="r", member_id=MEMBER, channel=common_pb2.CHANNEL_APP), metadata=key("app-key"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()
