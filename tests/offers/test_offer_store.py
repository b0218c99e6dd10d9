"""The offer-state owner on the real Redis, seeded only through its own API: wallet, ledger, budgets."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis
import redis.asyncio

from omnirec.domain.errors import NotFound
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.keys import Keys
from omnirec.offers.catalogue import Cap, Offer, load_catalogue
from omnirec.offers.store import CouponStatus, OfferStore
from tests.offers.conftest import EXAMPLE

R = TypeVar("R")
T = 1_800_000_000.0
DAY = 86_400.0
KITCHEN = next(o for o in load_catalogue(EXAMPLE).offers if o.id == "kitchen-5off25")
"""5 off 25, cap 2 per 30 days, valid until 2030."""


@pytest.fixture(params=["pipelined", "redis-py"])
def config(request: pytest.FixtureRequest, redis_client: redis.Redis, redis_prefix: str) -> RedisConfig:
    """With the client's URL the store sends its scripts on its pipelined connection (as a worker on one
    Redis does); without one, through redis-py (as on an embedded Redis's socket)."""
    url = redis_client.test_url if request.param == "pipelined" else None  # type: ignore[attr-defined]
    return RedisConfig(url=url, namespace=redis_prefix, socket_timeout_s=5.0, connect_timeout_s=5.0)


@pytest.fixture
def run(redis_client: redis.Redis, config: RedisConfig) -> Callable[[Callable[[OfferStore], Awaitable[R]]], R]:
    """Run a test body on one event loop with a store on a fresh asyncio client."""
    kw = redis_client.connection_pool.connection_kwargs

    def go(body: Callable[[OfferStore], Awaitable[R]]) -> R:
        async def main() -> R:
            client = redis.asyncio.Redis(host=kw["host"], port=kw["port"], db=kw.get("db", 0))
            store = OfferStore(client, config)
            try:
                return await body(store)
            finally:
                store.close()
                await client.aclose()
        return asyncio.run(main())

    return go


async def issue(store: OfferStore, request_id: str, member_id: str = "m1", offer: Offer = KITCHEN, now: float = T,
                channel: Channel = Channel.APP, fatigue: Cap | None = None) -> str:
    result = await store.issue(offer, member_id, channel, now, request_id, "fingerprint",
                               {"decision_id": f"d-{request_id}", "coupon_id": f"c-{request_id}"}, fatigue)
    return result.outcome


def test_issue_fills_the_wallet_once_per_request_and_statuses_are_derived(run) -> None:  # type: ignore[no-untyped-def]
    async def body(store: OfferStore) -> None:
        assert await issue(store, "r1") == "issued"
        assert await issue(store, "r1") == "replayed"  # a retry never issues a second coupon
        assert await issue(store, "r2", now=T + 1) == "issued"
        coupon = await store.coupon("m1", "c-r1", T)
        assert coupon is not None and coupon.offer_id == "kitchen-5off25" and coupon.decision_id == "d-r1"
        assert await store.redeem(coupon, KITCHEN, 30.0, T + 5, "red-1")
        wallet = await store.wallet("m1", T + 10)
        assert [c.coupon_id for c in wallet.coupons] == ["c-r1", "c-r2"]
        assert [c.coupon_id for c in wallet.by_status(CouponStatus.REDEEMED)] == ["c-r1"]
        assert [c.coupon_id for c in wallet.by_status(CouponStatus.ISSUED)] == ["c-r2"]
        later = await store.wallet("m1", KITCHEN.valid_until.timestamp())
        assert [c.coupon_id for c in later.by_status(CouponStatus.EXPIRED)] == ["c-r2"]
        usage = await store.usage("kitchen-5off25")
        assert (usage.issued, usage.reserved_cents, usage.redeemed, usage.spent_cents) == (2, 1000, 1, 500)

    run(body)


def test_redeem_exactly_once_under_concurrent_retries(run) -> None:  # type: ignore[no-untyped-def]
    async def body(store: OfferStore) -> None:
        await issue(store, "r1")
        coupon = await store.coupon("m1", "c-r1", T)
        assert coupon is not None
        results = await asyncio.gather(*(store.redeem(coupon, KITCHEN, 40.0, T + i, f"red-{i}") for i in range(16)))
        assert sum(results) == 1
        assert (await store.usage("kitchen-5off25")).redeemed == 1
        ghost = coupon.__class__(**{**coupon.__dict__, "coupon_id": "c9"})
        with pytest.raises(NotFound, match="no coupon 'c9'"):
            await store.redeem(ghost, KITCHEN, 40.0, T, "red-x")

    run(body)


def test_contact_ledger_counts_shown_and_issued_offers_by_window_channel_and_offer(
        run, config: RedisConfig) -> None:  # type: ignore[no-untyped-def]
    others = [o for o in load_catalogue(EXAMPLE).offers if o.id in ("welcome-10off50", "winback-15off60")]

    async def body(store: OfferStore) -> None:
        assert await store.show("m1", Channel.APP, "d1", others[:1], T - 10 * DAY) == [True]
        assert await store.show("m1", Channel.WEB, "d2", others, T - DAY) == [True, True]
        await issue(store, "r3", now=T, channel=Channel.APP)
        history = await store.contacts("m1", T - 30 * DAY)
        assert history.count() == 4
        assert history.count(T - 2 * DAY) == 3
        assert history.count(channel="app") == 2
        assert history.count(offer_id=others[0].id) == 2
        assert history.count(channel=Channel.WEB, offer_id="kitchen-5off25") == 0
        assert (await store.contacts("nobody", 0)).count() == 0
        with pytest.raises(ValueError, match="cannot count contacts since"):
            history.count(since_ts=0)
        await store.show("m1", Channel.APP, "d4", others[1:], T - 10 * DAY + config.contact_ttl_s + 1)
        assert (await store.contacts("m1", 0)).count() == 4  # the contact older than retention was trimmed

    run(body)


def test_caps_count_the_ledger_atomically(run) -> None:  # type: ignore[no-untyped-def]
    async def body(store: OfferStore) -> None:
        await store.show("m1", Channel.POS, "d0", [KITCHEN], T - DAY)
        assert await issue(store, "r1", channel=Channel.POS) == "issued"
        assert await issue(store, "r2", channel=Channel.POS) == "cap_reached"  # 2 per 30 days: shown + issued
        fatigue = Cap(count=2, period_days=7)
        assert await issue(store, "r3", member_id="m2", channel=Channel.POS, fatigue=fatigue) == "issued"
        await store.show("m2", Channel.POS, "d5", [o for o in load_catalogue(EXAMPLE).offers][:1], T)
        assert await issue(store, "r4", member_id="m2", channel=Channel.POS, fatigue=fatigue) == "fatigue_cap"

    run(body)


def test_malformed_wallet_entry_is_reported(run, redis_client: redis.Redis,  # type: ignore[no-untyped-def]
                                            config: RedisConfig) -> None:
    key = Keys(config.namespace).wallet("m1")
    redis_client.hset(key, "c1", "{not json")  # fault injection: a value no writer produces

    async def body(store: OfferStore) -> None:
        with pytest.raises(FeatureStoreError, match="malformed coupon"):
            await store.wallet("m1", T)
        assert redis_client.ttl(key) == -1  # reads never set TTLs
        redis_client.delete(key)
        await issue(store, "r1")
        assert 0 < redis_client.ttl(key) <= config.wallet_ttl_s

    run(body)


def test_contacts_are_parsed_together_and_a_malformed_one_is_named(run) -> None:  # type: ignore[no-untyped-def]
    async def body(store: OfferStore) -> None:
        assert await issue(store, "r1") == "issued"
        assert await issue(store, "r2", now=T + 1) == "issued"
        history = await store.contacts("m1", T - DAY)
        assert [(c.ts, c.offer_id, c.decision_id, c.channel) for c in history.contacts] == [
            (T, KITCHEN.id, "d-r1", Channel.APP), (T + 1, KITCHEN.id, "d-r2", Channel.APP)]
        await store.client.zadd(store.keys.contacts("m1"), {'["d-x","kitchen-5off25"]': T + 2})
        with pytest.raises(FeatureStoreError, match=r'malformed contact b\'\["d-x","kitchen-5off25"\]\''):
            await store.contacts("m1", T - DAY)

    run(body)
