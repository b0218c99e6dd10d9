"""AudienceService on a real server and Redis: the stream, its errors, explain, ConfirmSend and the caps it feeds,
the CLI writing the same rows, and a cancelled call or a passed deadline stopping the pull in the audience
process."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import grpc
import pyarrow.parquet as pq
import pytest
from service_harness import API_KEYS, RunningServer, materialize
from typer.testing import CliRunner

from omnirec.cli import app
from omnirec.config import OmnirecConfig
from omnirec.domain.readers import RetailData
from omnirec.feature_store.model import ProfileColumns
from omnirec.feature_store.reader import FeatureReader
from omnirec.offers.config import OfferConfig
from omnirec.offers.decision_log import DecisionLog
from omnirec.v1 import audience_pb2, audience_pb2_grpc, common_pb2, offers_pb2, offers_pb2_grpc


@pytest.fixture
def category(retail: RetailData, item_id: str) -> str:
    """A full category path (offer targets match categories exactly, as the offer engine does)."""
    items = retail.items.to_pydict()
    return items["category"][items["item_id"].index(item_id)]


def key(role: str) -> list[tuple[str, str]]:
    return [("x-api-key", API_KEYS[role])]


@pytest.fixture
def config(config: OmnirecConfig, tmp_path: Path) -> OmnirecConfig:
    """The service suite's config with this test's own decision log (the conftest `server` then uses it)."""
    return config.model_copy(update={"offers": OfferConfig(decision_log_dir=tmp_path / "decisions")})


def pull(server: RunningServer, role: str = "campaign", chunk: int = 0,
         **spec: object) -> list[audience_pb2.StreamAudienceResponse]:
    stub = audience_pb2_grpc.AudienceServiceStub(server.channel)
    args: dict[str, object] = {"channel": common_pb2.CHANNEL_APP, "max_size": 300}
    args.update(spec)
    request = audience_pb2.StreamAudienceRequest(audience=audience_pb2.AudienceSpec(**args), chunk_size=chunk)
    return list(stub.StreamAudience(request, metadata=key(role), timeout=60))


def rows(messages: list[audience_pb2.StreamAudienceResponse]) -> list[tuple[str, float, int, bool]]:
    out = []
    for m in messages[1:]:
        c = m.chunk
        out += list(zip(c.member_ids, c.scores, c.ranks, c.holdout, strict=True))
    return out


def test_stream_header_then_chunks_best_first(server: RunningServer, category: str) -> None:
    messages = pull(server, chunk=70, category_ids=[category], holdout_share=0.2, send_id="s1")
    header = messages[0].header
    assert messages[0].WhichOneof("payload") == "header"
    assert all(m.WhichOneof("payload") == "chunk" for m in messages[1:])
    got = rows(messages)
    assert header.total == len(got) == 300 and len(messages) == 1 + 5
    assert [r[2] for r in got] == list(range(1, 301))
    assert all(a[1] >= b[1] for a, b in zip(got, got[1:], strict=False))
    assert header.holdout_count == sum(r[3] for r in got) and 20 < header.holdout_count < 100
    assert header.model_version and header.feature_generation >= 1 and header.catalogue_version
    assert header.examined == 300 + sum(header.suppressed.values())
    assert rows(pull(server, chunk=70, category_ids=[category], holdout_share=0.2, send_id="s1")) == got
    records = [r for r in DecisionLog(server.config.offers.decision_log_dir).records() if r["type"] == "audience_pull"]
    assert len(records) == 2 and records[0]["caller"] == "campaign" and records[0]["counts"]["total"] == 300


@pytest.mark.parametrize(("spec", "field"), [
    ({"offer_id": "no-such-offer"}, "audience.offer_id"),
    ({"max_size": 0}, "audience.max_size"),
    ({}, "audience.target"),
    ({"category_ids": ["x"], "tiers": ["diamond"]}, "audience.tiers"),
    ({"category_ids": ["x"], "lifecycle_stages": ["sleepy"]}, "audience.lifecycle_stages"),
    ({"category_ids": ["x"], "channel": common_pb2.CHANNEL_UNSPECIFIED}, "audience.channel"),
])
def test_bad_requests_are_invalid_argument_naming_the_field(server: RunningServer, spec: dict[str, object],
                                                           field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        pull(server, **spec)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)


@pytest.mark.parametrize("role", ["app", "pos"])
def test_only_campaign_and_admin_may_pull(server: RunningServer, role: str, category: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        pull(server, role=role, category_ids=[category])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert pull(server, role="admin", category_ids=[category], max_size=5)[0].header.total == 5


def test_explain_one_member(server: RunningServer, category: str, known_member: str) -> None:
    stub = audience_pb2_grpc.AudienceServiceStub(server.channel)
    spec = audience_pb2.AudienceSpec(channel=common_pb2.CHANNEL_APP, max_size=10, category_ids=[category],
)
    verdict = stub.ExplainAudienceMember(audience_pb2.ExplainAudienceMemberRequest(audience=spec,
                                                                                   member_id=known_member),
                                         metadata=key("campaign"))
    assert verdict.scored and verdict.member_id == known_member
    assert verdict.included == (verdict.suppression == "")


def test_confirmed_sends_count_against_the_apps_caps(server: RunningServer, category: str) -> None:
    audience = rows(pull(server, category_ids=[category], max_size=1))
    member = audience[0][0]  # in the audience: consent on the app, not fatigued
    offers = offers_pb2_grpc.OfferServiceStub(server.channel)
    nbo = offers_pb2.NextBestOfferRequest(member_id=member, channel=common_pb2.CHANNEL_APP, k=5, explain=True)
    before = offers.NextBestOffer(nbo, metadata=key("app"))
    assert all(e.rule != "fatigue_cap" for e in before.excluded)
    stub = audience_pb2_grpc.AudienceServiceStub(server.channel)
    for i in range(6):  # the app's default fatigue cap: 6 contacts in 7 days
        send = audience_pb2.ConfirmSendRequest(send_id=f"send-{i}", channel=common_pb2.CHANNEL_APP,
                                               member_ids=[member])
        assert not stub.ConfirmSend(send, metadata=key("campaign")).replayed
        assert stub.ConfirmSend(send, metadata=key("campaign")).replayed  # idempotent by send id
    after = offers.NextBestOffer(nbo, metadata=key("app"))
    assert not after.offers and any(e.rule == "fatigue_cap" for e in after.excluded)
    decision = offers.DecideCoupon(offers_pb2.DecideCouponRequest(request_id="r1", member_id=member,
                                                                  channel=common_pb2.CHANNEL_APP),
                                   metadata=key("app"))
    assert not decision.issued
    assert decision.reason in (offers_pb2.COUPON_REASON_CAP_REACHED, offers_pb2.COUPON_REASON_NO_ELIGIBLE_OFFER)
    assert member not in {r[0] for r in rows(pull(server, category_ids=[category], max_size=300))}
    with pytest.raises(grpc.RpcError) as err:  # the same send id with other content
        stub.ConfirmSend(audience_pb2.ConfirmSendRequest(send_id="send-0", channel=common_pb2.CHANNEL_APP,
                                                         member_ids=[member, "m-other"]), metadata=key("campaign"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_cli_writes_the_rows_the_stream_sends(server: RunningServer, config: OmnirecConfig,
                                              category: str, tmp_path: Path) -> None:
    config_file = tmp_path / "omnirec.toml"
    config_file.write_text(
        f'data_dir = "{config.data_dir}"\n[train]\nbundle_root = "{config.train.bundle_root}"\n'
        f'[redis]\nurl = "{config.redis.url}"\nnamespace = "{config.redis.namespace}"\n'
        f'[offers]\ndecision_log_dir = "{config.offers.decision_log_dir}"\n')
    out = tmp_path / "audience.parquet"
    result = CliRunner().invoke(app, ["audience", "--category", category, "--channel", "app", "--max-size", "120",
                                      "--holdout-share", "0.1", "--send-id", "cli", "--out", str(out),
                                      "--no-progress", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pydict()
    streamed = rows(pull(server, category_ids=[category], max_size=120, holdout_share=0.1, send_id="cli"))
    assert list(zip(table["member_id"], table["rank"], table["holdout"], strict=True)) == \
        [(r[0], r[2], r[3]) for r in streamed]
    result = CliRunner().invoke(app, ["confirm-send", "--send-id", "cli", "--channel", "app", "--audience", str(out),
                                      "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    (sent,) = [r for r in DecisionLog(config.offers.decision_log_dir).records()
               if r["type"] == "confirm_send"]
    assert len(sent["members"]) + len(sent["holdout_members"]) == 120
    assert set(sent["holdout_members"]) == {m for m, h in zip(table["member_id"], table["holdout"], strict=True) if h}


@pytest.mark.parametrize(("spec", "field"), [
    ({"category_ids": ["ok", "bad\x00id"]}, "audience.category_ids[1]"),
    ({"category_ids": ["x"], "home_store_ids": [""]}, "audience.home_store_ids[0]"),
    ({"offer_id": "o\n1"}, "audience.offer_id"),
    ({"category_ids": ["x"], "send_id": "s" * 500, "holdout_share": 0.1}, "audience.send_id"),
])
def test_ids_are_checked_like_every_rpcs(server: RunningServer, spec: dict[str, object], field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        pull(server, **spec)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)


@pytest.fixture
def profile_reads(monkeypatch: pytest.MonkeyPatch) -> Synchronized[int]:
    """Chunks of profiles read by audience pulls, each made to take 50 ms (patched before the server starts,
    so its forked audience process runs with it)."""
    reads: Synchronized[int] = multiprocessing.get_context("fork").Value("i", 0)  # type: ignore[assignment]
    read = FeatureReader.profile_columns

    def slow(self: FeatureReader, member_ids: Sequence[str]) -> tuple[int, ProfileColumns]:
        with reads.get_lock():
            reads.value += 1
        time.sleep(0.05)
        return read(self, member_ids)

    monkeypatch.setattr(FeatureReader, "profile_columns", slow)
    return reads


@pytest.fixture
def slow_server(config: OmnirecConfig, retail: RetailData, profile_reads: Synchronized[int]) -> Iterator[RunningServer]:
    """A server whose pulls read 10 members per round trip (100 reads for the small retailer's members)."""
    service = config.service.model_copy(update={"audience_chunk_members": 10})
    config = config.model_copy(update={"service": service})
    materialize(retail, config)
    running = RunningServer(config, retail)
    yield running
    running.stop()


def _until(condition: Callable[[], object], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _cancelled_pulls(server: RunningServer) -> list[dict[str, Any]]:
    return [r for r in DecisionLog(server.config.offers.decision_log_dir).records()
            if r["type"] == "audience_pull" and r["counts"].get("cancelled")]


def _stops(reads: Synchronized[int]) -> int:
    """The read count once it has stopped moving (a chunk already under way may finish)."""
    before = -1
    while reads.value != before:
        before = reads.value
        time.sleep(0.5)
    return before


def test_cancelling_the_stream_stops_the_pull_on_the_server(slow_server: RunningServer, category: str,
                                                            profile_reads: Synchronized[int]) -> None:
    stub = audience_pb2_grpc.AudienceServiceStub(slow_server.channel)
    request = audience_pb2.StreamAudienceRequest(audience=audience_pb2.AudienceSpec(
        channel=common_pb2.CHANNEL_APP, max_size=1000, category_ids=[category]))
    call = stub.StreamAudience(request, metadata=key("campaign"), timeout=60)
    _until(lambda: profile_reads.value >= 3, "the pull did not start")
    call.cancel()
    stopped = _stops(profile_reads)
    time.sleep(1.0)
    assert profile_reads.value == stopped < 50  # a whole pull reads 100 chunks of 10
    _until(lambda: _cancelled_pulls(slow_server), "the cancelled pull was not logged")
    (logged,) = _cancelled_pulls(slow_server)
    assert logged["caller"] == "campaign" and logged["counts"]["examined"] <= 10 * stopped


def test_a_passed_deadline_stops_the_pull_on_the_server(slow_server: RunningServer, category: str,
                                                        profile_reads: Synchronized[int]) -> None:
    stub = audience_pb2_grpc.AudienceServiceStub(slow_server.channel)
    request = audience_pb2.StreamAudienceRequest(audience=audience_pb2.AudienceSpec(
        channel=common_pb2.CHANNEL_APP, max_size=1000, category_ids=[category]))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamAudience(request, metadata=key("campaign"), timeout=1.0))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _until(lambda: _cancelled_pulls(slow_server), "the pull past its deadline was not logged as cancelled")
    stopped = _stops(profile_reads)
    time.sleep(1.0)
    assert profile_reads.value == stopped < 50
    assert _cancelled_pulls(slow_server)[0]["counts"]["examined"] < 1000
