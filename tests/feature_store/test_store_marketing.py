"""Coupon wallet and contact ledger: idempotent writes and the counts caps and budgets read."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from omnirec.domain.errors import NotFound
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.marketing import Coupon, CouponStatus, MarketingStore
from omnirec.feature_store.reader import FeatureReader

T = 1_800_000_000.0


@pytest.fixture
def store(redis_client: redis.Redis, store_config: RedisConfig) -> MarketingStore:
    return MarketingStore(redis_client, store_config)


def coupon(coupon_id: str, offer_id: str = "o-100off30", expires: float = T + 86_400) -> Coupon:
    return Coupon(coupon_id, "m0000001", offer_id, f"d-{coupon_id}", T, expires, value=30.0)


def test_issue_is_idempotent_and_statuses_are_derived(store: MarketingStore) -> None:
    assert store.issue_coupon(coupon("c1"))
    assert not store.issue_coupon(coupon("c1", offer_id="other"))  # a retry never replaces or duplicates
    store.issue_coupon(coupon("c2", expires=T + 10))
    store.issue_coupon(coupon("c3"))
    store.redeem_coupon("m0000001", "c3", "r-1", ts=T + 5)
    wallet = store.wallet("m0000001", now=T + 100)
    assert [c.coupon_id for c in wallet.coupons] == ["c1", "c2", "c3"]
    assert wallet.coupons[0].offer_id == "o-100off30" and wallet.coupons[0].decision_id == "d-c1"
    assert [wallet.count(s) for s in CouponStatus] == [1, 1, 1]
    assert wallet.count(CouponStatus.ISSUED, offer_id="nope") == 0


def test_redeem_exactly_once_under_concurrent_retries(store: MarketingStore) -> None:
    store.issue_coupon(coupon("c1"))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: store.redeem_coupon("m0000001", "c1", f"r-{i}", ts=T + i), range(16)))
    assert sum(r.first_time for r in results) == 1
    assert len({r.coupon.redemption_id for r in results}) == 1
    with pytest.raises(NotFound, match="no coupon 'c9'"):
        store.redeem_coupon("m0000001", "c9", "r-x")


def test_contact_ledger_counts_by_window_channel_and_offer(store: MarketingStore, store_config: RedisConfig) -> None:
    store.record_contact("m0000001", "o1", Channel.APP, "d1", ts=T - 10 * 86_400)
    store.record_contact("m0000001", "o1", "web", "d2", ts=T - 86_400)
    store.record_contact("m0000001", "o2", "app", "d3", ts=T)
    assert store.contacts_since("m0000001", T - 30 * 86_400) == 3
    assert store.contacts_since("m0000001", T - 2 * 86_400) == 2
    assert store.contacts_since("m0000001", T - 30 * 86_400, channel="app") == 2
    assert store.contacts_since("m0000001", T - 30 * 86_400, offer_id="o1") == 1 + 1
    assert store.contacts_since("m0000001", T - 30 * 86_400, channel=Channel.WEB, offer_id="o2") == 0
    assert store.contacts_since("nobody", 0) == 0
    store.record_contact("m0000001", "o3", "app", "d4", ts=T + store_config.contact_ttl_s - 5 * 86_400)
    assert store.contacts_since("m0000001", 0) == 3  # the contact older than retention was trimmed


def test_request_read_carries_wallet_and_contacts(store: MarketingStore, reader: FeatureReader) -> None:
    store.issue_coupon(coupon("c1"))
    store.record_contact("m0000001", "o1", "app", "d1", ts=T - 60)
    got = reader.read_request("m0000001", now=T)
    assert got.member is not None
    assert got.member.wallet.count(CouponStatus.ISSUED) == 1
    assert got.member.contacts.count(channel="app") == 1
    with pytest.raises(ValueError, match="cannot count contacts since"):
        got.member.contacts.count(since_ts=0)


def test_malformed_wallet_entry_is_reported(store: MarketingStore, redis_client: redis.Redis,
                                            store_config: RedisConfig) -> None:
    redis_client.hset(Keys(store_config.namespace).wallet("m0000001"), "c1", "{not json")
    with pytest.raises(FeatureStoreError, match="malformed coupon"):
        store.wallet("m0000001")
    assert redis_client.ttl(Keys(store_config.namespace).wallet("m0000001")) == -1  # only real writes set TTLs
    store.issue_coupon(coupon("c2"))
    assert 0 < redis_client.ttl(Keys(store_config.namespace).wallet("m0000001")) <= store_config.wallet_ttl_s
