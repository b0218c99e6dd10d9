"""An audience decodes a chunk of members at once (`ProfileColumns`, `ContactColumns`, the raw ledger read,
the column-wise rules): each must give what the per-member parsers and rules give, on varied members."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
import redis
from test_builder import FATIGUE, NOW, World, profile

from omnirec.audience import AudienceBuilder, AudienceRequest, Suppression
from omnirec.audience.ledger import ledger_reader
from omnirec.domain.lifecycle import DAY, LifecycleRules
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect_async
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.model import CHANNELS, PROFILE_FIELDS, MemberProfile, ProfileColumns
from omnirec.offers.catalogue import Target
from omnirec.offers.policy import MemberView, OfferState, in_holdout, screen
from omnirec.offers.store import (
    Contact,
    ContactColumns,
    ContactHistory,
    Coupon,
    OfferStore,
    parse_contact_columns,
    parse_contacts,
)

STAGES = [s.value for s in LifecycleStage]


def record(rng: np.random.Generator, **change: str) -> bytes:
    """A packed member record with random but valid values (`change` overrides fields)."""
    ts = int(NOW) - int(rng.integers(0, 900)) * int(DAY)
    values = {
        "tier": str(rng.choice(["basic", "silver", "gold", "platinum"])), "lifecycle_stage": str(rng.choice(STAGES)),
        "recency_score": str(rng.integers(0, 6)), "frequency_score": str(rng.integers(0, 6)),
        "monetary_score": str(rng.integers(0, 6)), "points": str(rng.integers(0, 30_000)),
        "home_store": str(rng.choice(["s1", "s2", ""])), "region": str(rng.choice(["north", "south", ""])),
        **{f"act_{c.value}": str(rng.integers(0, 50)) for c in Channel},
        **{f"consent_{c.value}": str(rng.integers(0, 2)) for c in Channel},
        "signup_ts": str(ts - 100 * int(DAY)), "last_seen_ts": str(rng.choice([str(ts), ""])),
        "last_purchase_ts": str(rng.choice([str(ts), f"{ts}.5", ""])), "prev_purchase_ts": "", "_ts": str(int(NOW)),
    }
    if values["last_purchase_ts"] and rng.random() < 0.5:
        values["prev_purchase_ts"] = str(ts - int(rng.integers(1, 400)) * int(DAY))
    values.update(change)
    return "\x1f".join(values[f] for f in PROFILE_FIELDS).encode()


def key(member_id: str) -> str:
    return f"ns@1:v5:member:{{{member_id}}}"


def per_member(ids: Sequence[str], raws: Sequence[bytes | None]) -> ProfileColumns:
    return ProfileColumns.from_profiles(ids, [None if r is None else MemberProfile.from_packed(m, key(m), r)
                                              for m, r in zip(ids, raws, strict=True)])


def assert_same_columns(a: ProfileColumns, b: ProfileColumns) -> None:
    for name in ("member_ids", "present", "tier", "home_store", "region"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    for name in ("signup_ts", "last_purchase_ts", "prev_purchase_ts"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for c in CHANNELS:
        assert a.consent[c].tolist() == b.consent[c].tolist(), c


@pytest.mark.parametrize("odd", [
    {},
    {"points": " 5"},  # Python's int() reads it, Arrow's cast does not: the chunk goes member by member
    {"recency_score": "+3"},
    {"signup_ts": "1.7e9"},
    {"last_purchase_ts": "", "prev_purchase_ts": ""},
])
def test_profile_columns_equal_the_per_member_parser(odd: dict[str, str]) -> None:
    rng = np.random.default_rng(7)
    ids = [f"m{i}" for i in range(300)]
    raws: list[bytes | None] = [record(rng) for _ in ids]
    raws[3] = None  # not in the store
    raws[17] = record(rng, **odd)
    raws[299] = None
    assert_same_columns(ProfileColumns.from_packed(ids, key, raws), per_member(ids, raws))
    assert_same_columns(ProfileColumns.from_packed([], key, []), per_member([], []))
    assert_same_columns(ProfileColumns.from_packed(["a"], key, [None]), per_member(["a"], [None]))


@pytest.mark.parametrize("bad", [
    {"tier": ""}, {"lifecycle_stage": "sleepy"}, {"recency_score": "7"}, {"points": "many"},
    {"consent_app": "2"}, {"signup_ts": ""}, {"last_seen_ts": "yesterday"}, {"_ts": "x"},
    {"region": "north\x1fextra"},  # one field too many
])
def test_a_malformed_record_raises_what_the_per_member_parser_raises(bad: dict[str, str]) -> None:
    rng = np.random.default_rng(1)
    ids = ["m0", "m1", "m2"]
    raws: list[bytes | None] = [record(rng), record(rng, **bad), record(rng)]
    with pytest.raises(FeatureStoreError) as expected:
        per_member(ids, raws)
    with pytest.raises(FeatureStoreError) as got:
        ProfileColumns.from_packed(ids, key, raws)
    assert str(got.value) == str(expected.value) and "m1" in str(got.value)
    with pytest.raises(UnicodeDecodeError):
        ProfileColumns.from_packed(["m0"], key, [b"\xff" + record(rng)])


def entry(decision: object, offer: object, channel: object, spacing: bool = False) -> bytes:
    return json.dumps([decision, offer, channel], separators=(", ", ": ") if spacing else (",", ":")).encode()


def histories(rng: np.random.Generator, n: int) -> list[list[tuple[bytes, float]]]:
    """Members with no contact, one, or several on several channels and offers, some long ago."""
    out = []
    for _ in range(n):
        k = int(rng.choice([0, 0, 1, 2, 5]))
        out.append([(entry(f"d{rng.integers(1e6)}", str(rng.choice(["o1", "o2", "o3"])),
                           str(rng.choice([c.value for c in Channel]))),
                     float(NOW - rng.integers(0, 90) * DAY - rng.random())) for _ in range(k)])
    return out


def assert_same_counts(columns: ContactColumns, per: list[ContactHistory]) -> None:
    for since in (NOW - 90 * DAY, NOW - 30 * DAY, NOW - 7 * DAY, NOW):
        for channel in (None, Channel.APP, "web"):
            for offer in (None, "o1", "o3"):
                assert columns.count(since, channel, offer).tolist() == [h.count(since, channel, offer) for h in per]


@pytest.mark.parametrize("odd", [
    None,
    (entry("d", "o1", "app", spacing=True), NOW),  # JSON spelled otherwise than `_contact_entry` writes it
    (entry("d", 7, "app"), NOW),  # a number for an offer id: `parse_contacts` reads it as "7"
    (entry('d"q', "o1", "web"), NOW),  # an escape in a string: read by the JSON scanner
    (entry("d", "o\u00e9", "app"), NOW),  # json.dumps escapes the non-ASCII character
    ('["d","o\u00e9","pos"]'.encode(), NOW),  # raw UTF-8
])
def test_contact_columns_equal_the_per_member_parser(odd: tuple[bytes, float] | None) -> None:
    rng = np.random.default_rng(3)
    raws = histories(rng, 200)
    if odd is not None:
        raws[11] = [*raws[11], odd]
    ids = [f"m{i}" for i in range(len(raws))]
    since = NOW - 90 * DAY
    per = [parse_contacts(f"c:{m}", r, since) for m, r in zip(ids, raws, strict=True)]
    columns = parse_contact_columns(ids, lambda m: f"c:{m}", raws, since)
    assert columns.members == len(ids)
    assert_same_counts(columns, per)
    assert_same_counts(ContactColumns.of(per, since), per)
    empty = parse_contact_columns(["a", "b"], lambda m: m, [[], []], since)
    assert empty.count().tolist() == [0, 0]
    with pytest.raises(ValueError, match="cannot count"):
        columns.count(since - 1)


@pytest.mark.parametrize("bad", [entry("d", "o1", "fax"), b'["d","o1"]', b"not json", b'["d","o1","app"]x'])
def test_a_malformed_contact_raises_what_the_per_member_parser_raises(bad: bytes) -> None:
    raws = [[(entry("d", "o1", "app"), NOW)], [(bad, NOW)]]
    with pytest.raises(FeatureStoreError) as expected:
        parse_contacts("c:m1", raws[1], NOW - DAY)
    with pytest.raises(FeatureStoreError) as got:
        parse_contact_columns(["m0", "m1"], lambda m: f"c:{m}", raws, NOW - DAY)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("protocol", [2, 3])
def test_ledger_reader_reads_what_marketing_states_reads(redis_client: redis.Redis, protocol: int) -> None:
    url, namespace = redis_client.test_url, redis_client.test_prefix  # type: ignore[attr-defined]
    client = redis.Redis.from_url(url, socket_timeout=5, protocol=protocol)
    config = RedisConfig(url=url, namespace=namespace)
    store = OfferStore(connect_async(config), config, sync_client=client)
    ids = [f"m{i}" for i in range(40)]
    now = NOW
    store.confirm_send("s1", "o1", Channel.APP, ids[0::2], now - 3 * DAY, now)
    store.confirm_send("s2", "o2", Channel.WEB, ids[0::3], now - 40 * DAY, now)
    store.confirm_send("s3", "o1", Channel.APP, ids[0::5], now - 1 * DAY, now)
    keys = Keys(namespace)
    for i, m in enumerate(ids[0::4]):
        coupon = Coupon(f"c{i}", m, "o1", f"d{i}", now - 5 * DAY, now + DAY * (i % 3 - 1), 5.0,
                        now - DAY if i % 2 else None, "r" if i % 2 else None)
        client.hset(keys.wallet(m), coupon.coupon_id, coupon.to_json())
    since = now - 30 * DAY
    for wallets in (True, False):
        contacts, got = ledger_reader(store)(ids, since, now, wallets)
        expected = store.marketing_states(ids, since, now, wallets)
        assert got == [w for _, w in expected]
        for channel in (None, Channel.APP, Channel.WEB):
            for offer in (None, "o1", "o2"):
                assert contacts.count(since, channel, offer).tolist() == \
                    [h.count(since, channel, offer) for h, _ in expected]
    assert sum(len(w.coupons) for w in got) == 0 and sum(len(w.coupons) for w in
                                                         ledger_reader(store)(ids, since, now, True)[1]) == 10
    client.set(keys.contacts("m1"), "not a sorted set")
    with pytest.raises(redis.ResponseError):
        ledger_reader(store)(ids, since, now, False)
    client.close()


def varied_world(seed: int, n: int = 600) -> World:
    """Members of every tier, stage and consent, with contacts on several channels and offers (some old)
    and coupons of the offers, some redeemed."""
    rng = np.random.default_rng(seed)
    world = World(n)
    for m in world.ids:
        if rng.random() < 0.05:
            world.profiles[m] = None
            continue
        world.profiles[m] = profile(m, tier=str(rng.choice(["basic", "silver", "gold", "platinum"])),
                                    last_purchase_days=float(rng.choice([1, 20, 70, 150, 400, 900])),
                                    consent=bool(rng.random() < 0.8), home_store=str(rng.choice(["s1", "s2"])),
                                    region=str(rng.choice(["north", "south"])))
        for i in range(int(rng.choice([0, 0, 1, 2, 3]))):
            channel = Channel(str(rng.choice(list(Channel))))
            world.contacts[m].append(Contact(NOW - float(rng.integers(0, 80)) * DAY, channel,
                                             str(rng.choice(["beauty-20pct", "winback-15off60", "x"])), f"d{i}"))
        if rng.random() < 0.2:
            world.coupons[m].append(Coupon("c", m, str(rng.choice(["beauty-20pct", "winback-15off60"])), "d",
                                           NOW - 9 * DAY, NOW + DAY, 5.0, NOW - DAY if rng.random() < 0.5 else None))
    return world


@pytest.mark.parametrize("request_args", [
    {"target": Target(scope="categories", ids=("beauty/skincare",))},
    {"target": Target(scope="categories", ids=("beauty/skincare",)), "tiers": frozenset({"gold", "silver"}),
     "stages": frozenset({LifecycleStage.ACTIVE, LifecycleStage.AT_RISK}), "home_stores": frozenset({"s1"})},
    {"target": Target(scope="categories", ids=("beauty/skincare",)), "regions": frozenset({"north"}),
     "channel": Channel.WEB},
    {"offer_id": "beauty-20pct"},
    {"offer_id": "winback-15off60", "channel": Channel.WEB},
    {"offer_id": "welcome-10off50", "max_size": 40},
])
def test_chunks_decide_as_the_per_member_rules_do(request_args: dict[str, object]) -> None:
    world = varied_world(11)
    builder = AudienceBuilder(TierLadder(), LifecycleRules(), FATIGUE, chunk=64)
    request = AudienceRequest(**{"channel": Channel.APP, "max_size": 10_000, **request_args})  # type: ignore[arg-type]
    audience = builder.build(request, world.sources(), NOW)
    offer = builder.offer(request, world.catalogue, NOW)
    since = builder.since(request, offer, NOW)
    expected: dict[Suppression, int] = {}
    included = []
    for m in world.ids[:audience.examined]:  # scores fall with the member's number (test_builder.World)
        p = world.profiles[m]
        (history, wallet), = world.marketing([m], since, NOW, offer is not None)
        (stage,) = builder.stages([p], NOW)
        why, _ = builder.verdict(request, offer, p, stage, history, wallet, NOW)
        if why is None:
            included.append(m)
        else:
            expected[why] = expected.get(why, 0) + 1
    assert list(audience.rows.member_ids) == included
    assert audience.suppressed == expected
    assert len(expected) >= 2
    assert list(audience.rows.tiers) == [world.profiles[m].tier for m in included]  # type: ignore[union-attr]


def test_screen_tells_members_apart_only_by_the_offers_holdout() -> None:
    """What lets a chunk run `screen` once per group of alike members (`AudienceBuilder._screen_codes`): two
    members with the same view and state get the same verdict unless the offer's holdout splits them."""
    world = World()
    rng = np.random.default_rng(5)
    tiers = TierLadder()
    seen = {True: 0, False: 0}
    for offer in world.catalogue.offers:
        for _ in range(200):
            view = MemberView(f"a{rng.integers(1e9)}", str(rng.choice(["basic", "silver", "gold", "platinum"])),
                              LifecycleStage(str(rng.choice(STAGES))),
                              frozenset(c for c in Channel if rng.random() < 0.7))
            other = replace(view, member_id=f"b{rng.integers(1e9)}")
            state = OfferState(member_contacts=int(rng.integers(0, 3)))
            channel = Channel(str(rng.choice(list(offer.channels))))
            same = in_holdout(offer.id, view.member_id, offer.holdout_share) == \
                in_holdout(offer.id, other.member_id, offer.holdout_share)
            if same:
                assert screen(offer, view, channel, NOW, state, tiers) == \
                    screen(offer, other, channel, NOW, state, tiers)
            seen[same] += 1
    assert seen[True] > 100 and seen[False] > 5
