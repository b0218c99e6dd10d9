"""The worker's wiring: one client pair, the engine reading member profiles and stock from the materialised
feature store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from omnirec.config import OmnirecConfig
from omnirec.domain.readers import MEMBERS_FILE
from omnirec.domain.vocab import Channel
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.materialize import materialize
from omnirec.offers.config import OfferConfig
from omnirec.offers.policy import Rule
from omnirec.service import wiring
from tests.offers.conftest import EXAMPLE


def test_engine_reads_tier_stage_and_consent_from_the_feature_store(small_retail_dir: Path, redis_client: redis.Redis,
                                                                     redis_prefix: str, tmp_path: Path) -> None:
    kw = redis_client.connection_pool.connection_kwargs
    redis_cfg = RedisConfig(url=f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}", namespace=redis_prefix)
    config = OmnirecConfig(data_dir=small_retail_dir, redis=redis_cfg,
                           offers=OfferConfig(catalogue_path=EXAMPLE, decision_log_dir=tmp_path / "decisions"))
    materialize(small_retail_dir, redis_cfg, config.tiers, config.lifecycle)
    parts = wiring.build(config, SimpleNamespace(current=None))  # type: ignore[arg-type]
    engine = parts.offers
    assert engine.store.client is engine.reader.client  # one asyncio client for reads and offer state
    members = pq.read_table(small_retail_dir / MEMBERS_FILE)
    basic = members.filter(pc.and_(pc.equal(members["tier"], "basic"), members["consent_web"]))
    member_id = basic["member_id"][0].as_py()
    no_consent = members.filter(pc.invert(members["consent_app"]))["member_id"][0].as_py()

    async def body() -> None:
        try:
            result = await engine.next_best_offer(member_id, Channel.WEB, None, k=5)
            rules = {e.offer_id: e.rule for e in result.ranking.excluded}
            assert rules["gold-gift-electronics"] == Rule.NOT_ELIGIBLE_TIER
            assert result.degraded and result.catalogue_version
            excluded = (await engine.next_best_offer(no_consent, Channel.APP, None, k=5)).ranking.excluded
            assert {e.rule for e in excluded} <= {Rule.NO_CONSENT, Rule.WRONG_CHANNEL}
        finally:
            await parts.features.close()

    asyncio.run(body())
    record = next(engine.log.records())
    assert record["member"]["tier"] == "basic" and "web" in record["member"]["consent"]
    assert record["member"]["feature_version"].startswith("generation-")
