"""Golden keys: the layout in feature_store/FORMAT.md is a contract with every reader of the store."""

import pyarrow as pa
import pytest
from pydantic import ValidationError
from redis.crc import key_slot

from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import is_cluster
from omnirec.feature_store.keys import DURABLE_VERSION, SCHEMA_VERSION, Keys, event_digest, key_column


def test_schema_version_is_pinned() -> None:
    assert SCHEMA_VERSION == 5
    assert DURABLE_VERSION == 2


def test_generation_scoped_keys() -> None:
    k = Keys("omnirec", generation=7)
    assert k.member("m0000001") == "omnirec@7:v5:member:{m0000001}"
    assert k.recent("m1") == "omnirec@7:v5:recent:{m1}"
    assert k.purchased("m1") == "omnirec@7:v5:purchased:{m1}"
    assert k.anon_recent("anon-0-1") == "omnirec@7:v5:anon_recent:{anon-0-1}"
    assert k.item("i000001") == "omnirec@7:v5:item:{i000001}"
    assert k.stock("online") == "omnirec@7:v5:stock:{online}"
    assert k.category_items("home/kitchen") == "omnirec@7:v5:category_items:{home/kitchen}"
    assert k.brand_items("b1") == "omnirec@7:v5:brand_items:{b1}"
    assert k.member_top("m0000001") == "omnirec@7:v5:member_top:{m0000001}"
    assert k.all_generations_pattern() == "omnirec@*"


def test_a_members_feature_keys_share_one_cluster_slot_in_every_generation() -> None:
    keys = [Keys("omnirec", g).member("m0000001") for g in (1, 2)]
    keys += [Keys("omnirec", 2).recent("m0000001"), Keys("omnirec", 2).purchased("m0000001"),
             Keys("omnirec", 2).member_top("m0000001")]
    assert {key_slot(k.encode()) for k in keys} == {key_slot(b"m0000001")}
    assert key_slot(Keys("omnirec", 2).member("m0000002").encode()) == key_slot(b"m0000002")


def test_key_column_builds_the_same_keys_as_one_at_a_time() -> None:
    k = Keys("omnirec", 3)
    ids = ["m1", "anon-0-1", "x}y"]
    for key in (k.member, k.stock, k.identity):
        assert key_column(key, pa.array(ids)).to_pylist() == [key(i) for i in ids]


def test_durable_keys_ignore_the_generation() -> None:
    for k in (Keys("omnirec"), Keys("omnirec", generation=9)):
        assert k.pointer() == "omnirec:v2:meta:{pointer}"
        assert k.generation_counter() == "omnirec:v2:meta:{generation}"
        assert k.identity("anon-1") == "omnirec:v2:identity:{anon-1}"
        assert k.wallet("m1") == "omnirec:v2:wallet:{m1}"
        assert k.contacts("m1") == "omnirec:v2:contacts:{m1}"
        assert k.seen("m1", "event_id:e1") == "omnirec:v2:seen:{m1}:event_id:e1"
        assert k.durable("budget", "offer-9") == "omnirec:v2:budget:{offer-9}"
        assert k.offer_budget("o-1") == "omnirec:v2:offer_budget:{o-1}"
        assert k.offer_decision("req-1") == "omnirec:v2:offer_decision:{req-1}"
        assert k.offer_stats("m1") == "omnirec:v2:offer_stats:{m1}"
        assert k.offer_send("s-1") == "omnirec:v2:offer_send:{s-1}"
        assert k.offer_hold("o-1", "req-1") == "omnirec:v2:offer_hold:{o-1}:req-1"
        assert k.offer_holds("o-1") == "omnirec:v2:offer_holds:{o-1}"
        assert k.offer_request("m1", "req-1") == "omnirec:v2:offer_request:{m1}:req-1"
        assert k.offer_redeemed("o-1", "cpn-1") == "omnirec:v2:offer_redeemed:{o-1}:cpn-1"


def test_offer_state_is_tagged_so_each_offers_script_touches_one_slot() -> None:
    """A member's offer state shares the member's slot (feature keys too); an offer's budget and reservations
    share the offer's slot (the Redis Cluster protocol in offers/store.py relies on both)."""
    k = Keys("omnirec", generation=3)
    member = {k.wallet("m1"), k.contacts("m1"), k.offer_stats("m1"), k.offer_request("m1", "r1"), k.member("m1"),
              k.seen("m1", "event_id:e1")}
    assert {key_slot(key.encode()) for key in member} == {key_slot(b"m1")}
    offer = {k.offer_budget("o1"), k.offer_hold("o1", "r1"), k.offer_holds("o1"), k.offer_redeemed("o1", "c1")}
    assert {key_slot(key.encode()) for key in offer} == {key_slot(b"o1")}


def test_at_switches_generation_only() -> None:
    assert Keys("ns", 1).at(2) == Keys("ns", 2)


@pytest.mark.parametrize("namespace", ["", "a:b", "a@b", "a b"])
def test_bad_namespace_rejected(namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        Keys(namespace)
    with pytest.raises(ValidationError):
        RedisConfig(namespace=namespace)


def test_event_digest_is_stable_across_processes() -> None:
    assert event_digest("m1", None, "i1", "app", "view", None, 1, 0.0, 1_700_000_000) == "d07abdbfce74bbb849aa9ee6"
    assert event_digest("m1", "i1") != event_digest("m1i1")


def test_config_forbids_unknown_fields_and_detects_cluster_urls() -> None:
    with pytest.raises(ValidationError):
        RedisConfig(hostname="x")  # type: ignore[call-arg]
    assert is_cluster(RedisConfig(url="redis+cluster://10.0.0.1:7000"))
    assert is_cluster(RedisConfig(url="redis://10.0.0.1:7000", cluster=True))
    assert not is_cluster(RedisConfig(url="redis://10.0.0.1:6379/0"))
