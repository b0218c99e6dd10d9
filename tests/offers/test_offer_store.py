"""The offer-state owner on the real Redis, seeded only through its own API: wallet, ledger, budgets."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from omnirec.domain.errors import NotFound
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.keys import Keys
from omnirec.offers.catalogue import Cap, Offer, load_catalogue
from omnirec.offers.store import CouponStatus, OfferStore
from tests.offers.conftest import EXAMPLE

T = 1_800_000_000.0
DAY = 86_400.0
KITCHEN = next(o for o in load_catalogue(EXAMPLE).offers if o.id == "kitchen-5off25")
"""5 off 25, cap 2 per 30 days, valid until 2030."""


@pytest.fixture
def config(redis_prefix: str) -> RedisConfig:
    return RedisConfig(namespace=redis_prefix)


@pytest.fixture
def store(redis_client: redis.Redis, config: RedisConfig) -> OfferStore:
    return OfferStore(redis_client, config)


def issue(store: OfferStore, request_id: str, member_id: str = "m1", offer: Offer = KITCHEN, now: float = T,
          channel: str = "app", fatigue: Cap | None = None) -> str:
    result = store.issue(offer, member_id, channel, now, request_id, f"d-{request_id}", f"c-{request_id}",
                         {"decision_id": f"d-{request_id}"}, fatigue)
    return result.outcome


def test_issue_fills_the_wallet_once_per_request_and_statuses_are_derived(store: OfferStore) -> None:
    assert issue(store, "r1") == "issued"
    assert issue(store, "r1") == "replayed"  # a retry never issues a second coupon
    assert issue(store, "r2", now=T + 1) == "issued"
    coupon = store.coupon("m1", "c-r1", T)
    assert coupon is not None and coupon.offer_id == "kitchen-5off25" and coupon.decision_id == "d-r1"
    assert store.redeem(coupon, KITCHEN, 30.0, T + 5, "red-1")
    wallet = store.wallet("m1", T + 10)
    assert [c.coupon_id for c in wallet.coupons] == ["c-r1", "c-r2"]
    assert [c.coupon_id for c in wallet.by_status(CouponStatus.REDEEMED)] == ["c-r1"]
    assert [c.coupon_id for c in wallet.by_status(CouponStatus.ISSUED)] == ["c-r2"]
    later = store.wallet("m1", KITCHEN.valid_until.timestamp())
    assert [c.coupon_id for c in later.by_status(CouponStatus.EXPIRED)] == ["c-r2"]
    usage = store.usage("kitchen-5off25")
    assert (usage.issued, usage.reserved_cents, usage.redeemed, usage.spent_cents) == (2, 1000, 1, 500)


def test_redeem_exactly_once_under_concurrent_retries(store: OfferStore) -> None:
    issue(store, "r1")
    coupon = store.coupon("m1", "c-r1", T)
    assert coupon is not None
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: store.redeem(coupon, KITCHEN, 40.0, T + i, f"red-{i}"), range(16)))
    assert sum(results) == 1
    assert store.usage("kitchen-5off25").redeemed == 1
    ghost = coupon.__class__(**{**coupon.__dict__, "coupon_id": "c9"})
    with pytest.raises(NotFound, match="no coupon 'c9'"):
        store.redeem(ghost, KITCHEN, 40.0, T, "red-x")


def test_contact_ledger_counts_shown_and_issued_offers_by_window_channel_and_offer(
        store: OfferStore, config: RedisConfig) -> None:
    store.record_contacts("m1", Channel.APP, "d1", ["o1"], T - 10 * DAY)
    store.record_contacts("m1", Channel.WEB, "d2", ["o1", "o2"], T - DAY)
    issue(store, "r3", now=T, channel="app")
    history = store.contacts("m1", T - 30 * DAY)
    assert history.count() == 4
    assert history.count(T - 2 * DAY) == 3
    assert history.count(channel="app") == 2
    assert history.count(offer_id="o1") == 2
    assert history.count(channel=Channel.WEB, offer_id="kitchen-5off25") == 0
    assert store.contacts("nobody", 0).count() == 0
    with pytest.raises(ValueError, match="cannot count contacts since"):
        history.count(since_ts=0)
    store.record_contacts("m1", Channel.APP, "d4", ["o3"], T - 10 * DAY + config.contact_ttl_s + 1)
    assert store.contacts("m1", 0).count() == 4  # the contact older than retention was trimmed


def test_caps_count_the_ledger_atomically(store: OfferStore) -> None:
    store.record_contacts("m1", Channel.POS, "d0", ["kitchen-5off25"], T - DAY)
    assert issue(store, "r1", channel="pos") == "issued"
    assert issue(store, "r2", channel="pos") == "cap_reached"  # 2 per 30 days: one shown, one issued
    fatigue = Cap(count=2, period_days=7)
    assert issue(store, "r3", member_id="m2", channel="pos", fatigue=fatigue) == "issued"
    store.record_contacts("m2", Channel.POS, "d5", ["other"], T)
    assert issue(store, "r4", member_id="m2", channel="pos", fatigue=fatigue) == "fatigue_cap"


def test_malformed_wallet_entry_is_reported(store: OfferStore, redis_client: redis.Redis,
                                            config: RedisConfig) -> None:
    key = Keys(config.namespace).wallet("m1")
    redis_client.hset(key, "c1", "{not json")  # fault injection: a value no writer produces
    with pytest.raises(FeatureStoreError, match="malformed coupon"):
        store.wallet("m1", T)
    assert redis_client.ttl(key) == -1  # reads never set TTLs
    redis_client.delete(key)
    issue(store, "r1")
    assert 0 < redis_client.ttl(key) <= config.wallet_ttl_s
