"""`omnirec audience --engine spark` on a real local[2] Spark and a real Redis: the same audience as the
single-machine builder, for a category target and for an offer with consent, caps and fatigue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from service_harness import materialize
from typer.testing import CliRunner

from omnirec.audience import Audience, AudienceRequest, Campaigns, Suppression
from omnirec.audience import spark as spark_engine
from omnirec.campaign_cli import _campaigns
from omnirec.cli import app
from omnirec.config import OmnirecConfig
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.readers import RetailData
from omnirec.domain.vocab import Channel
from omnirec.offers.catalogue import Target
from omnirec.offers.config import OfferConfig

pytest.importorskip("pyspark")
OFFER = "beauty-20pct"


@pytest.fixture
def category(retail: RetailData, item_id: str) -> str:
    """A full category path (offer targets match categories exactly)."""
    items = retail.items.to_pydict()
    return items["category"][items["item_id"].index(item_id)]


@pytest.fixture
def campaign_config(config: OmnirecConfig, tmp_path: Path, retail: RetailData) -> OmnirecConfig:
    cfg = config.model_copy(update={"offers": OfferConfig(decision_log_dir=tmp_path / "decisions")})
    materialize(retail, cfg)
    return cfg


@pytest.fixture
def campaigns(campaign_config: OmnirecConfig) -> Iterator[Campaigns]:
    with _campaigns(campaign_config) as campaigns:
        yield campaigns


def both(campaigns: Campaigns, spark: object, work: Path, request: AudienceRequest) -> tuple[Audience, Audience]:
    now = campaigns.clock()
    sources = campaigns.sources()
    return (campaigns.builder.build(request, sources, now),
            spark_engine.build(spark, campaigns.builder, request, sources, now, work))  # type: ignore[arg-type]


def assert_same(local: Audience, on_spark: Audience) -> None:
    assert len(local.rows) > 0
    assert list(on_spark.rows.member_ids) == list(local.rows.member_ids)
    assert list(on_spark.rows.ranks) == list(local.rows.ranks)
    assert list(on_spark.rows.holdout) == list(local.rows.holdout)
    assert list(on_spark.rows.tiers) == list(local.rows.tiers)
    assert list(on_spark.rows.stages) == list(local.rows.stages)
    np.testing.assert_allclose(on_spark.rows.scores, local.rows.scores, rtol=1e-5, atol=1e-6)
    assert (on_spark.model_version, on_spark.feature_generation) == (local.model_version, local.feature_generation)


def test_category_target_equals_the_single_machine_audience(campaigns: Campaigns, spark: object,
                                                            category: str, tmp_path: Path) -> None:
    request = AudienceRequest(channel=Channel.APP, max_size=150, target=Target(scope="categories", ids=(category,)),
                              holdout_share=0.2, send_id="s1")
    local, on_spark = both(campaigns, spark, tmp_path / "work", request)
    assert len(local.rows) == 150 and local.rows.holdout.any()
    assert_same(local, on_spark)


def test_offer_with_consent_caps_and_fatigue_equals_the_single_machine_audience(
        campaigns: Campaigns, spark: object, tmp_path: Path) -> None:
    request = AudienceRequest(channel=Channel.APP, max_size=5_000, offer_id=OFFER, holdout_share=0.1,
                              send_id="s2")
    before = campaigns.builder.build(request, campaigns.sources(), campaigns.clock())
    capped, fatigued = list(before.rows.member_ids[:5]), list(before.rows.member_ids[5:10])
    for i in range(2):  # the offer's cap: 2 in 30 days
        campaigns.confirm(f"offer-{i}", OFFER, Channel.APP, capped, [], caller="test")
    for i in range(6):  # the app's fatigue cap: 6 contacts in 7 days
        campaigns.confirm(f"news-{i}", "", Channel.APP, fatigued, [], caller="test")
    local, on_spark = both(campaigns, spark, tmp_path / "after", request)
    assert_same(local, on_spark)
    assert not set(capped + fatigued) & set(on_spark.rows.member_ids)
    # the audience is not full, so both engines examined every member and their counts agree exactly
    assert local.examined == on_spark.examined == local.scored
    assert on_spark.suppressed == local.suppressed
    assert on_spark.suppressed[Suppression.CAP_REACHED] == 5
    assert on_spark.suppressed[Suppression.FATIGUE_CAP] == 5
    assert on_spark.suppressed[Suppression.NO_CONSENT] > 0
    assert on_spark.suppressed[Suppression.NOT_ELIGIBLE_TIER] > 0


def test_cli_spark_engine_writes_the_local_file(campaign_config: OmnirecConfig, spark: object, category: str,
                                                tmp_path: Path) -> None:
    config_file = tmp_path / "omnirec.toml"
    config_file.write_text(
        f'data_dir = "{campaign_config.data_dir}"\n[train]\nbundle_root = "{campaign_config.train.bundle_root}"\n'
        f'[redis]\nurl = "{campaign_config.redis.url}"\nnamespace = "{campaign_config.redis.namespace}"\n'
        f'[offers]\ndecision_log_dir = "{campaign_config.offers.decision_log_dir}"\n')
    tables = {}
    for engine in ("local", "spark"):
        out = tmp_path / f"{engine}.parquet"
        result = CliRunner().invoke(app, ["audience", "--category", category, "--channel", "app", "--max-size", "80",
                                          "--holdout-share", "0.1", "--send-id", "cli", "--out", str(out),
                                          "--engine", engine, "--no-progress", "--config", str(config_file)])
        assert result.exit_code == 0, result.output
        tables[engine] = pq.read_table(out)
    assert tables["spark"].schema == tables["local"].schema
    for column in ("member_id", "rank", "tier", "lifecycle_stage", "holdout"):
        assert tables["spark"][column].to_pylist() == tables["local"][column].to_pylist()
    result = CliRunner().invoke(app, ["audience", "--category", category, "--channel", "app", "--max-size", "80",
                                      "--ranking", "uplift", "--out", str(tmp_path / "x.parquet"),
                                      "--engine", "spark", "--no-progress", "--config", str(config_file)])
    assert isinstance(result.exception, InvalidArgument) and "rank_by" in str(result.exception)
