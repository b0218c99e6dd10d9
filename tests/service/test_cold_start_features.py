"""Train/serve parity of the cold-start profile: serving names exactly the member features training used."""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow.compute as pc
from service_harness import materialize

from omnirec.config import OmnirecConfig
from omnirec.domain.readers import RetailData
from omnirec.domain.vocab import Col
from omnirec.feature_store.connection import connect, connect_async
from omnirec.service.features import Features
from omnirec.training.features import member_activity, member_features


async def _serving_names(config: OmnirecConfig, member_ids: list[str]) -> list[list[str]]:
    client = connect(config.redis)
    async_client = connect_async(config.redis)
    try:
        features = Features(client, async_client, config.redis)
        members = [await features.member(member_id, None, 5.0) for member_id in member_ids]
    finally:
        await async_client.aclose()
        client.close()
    return [sorted(m.profile.feature_names()) if m.profile else [] for m in members]


def test_serving_profile_of_every_member_equals_their_training_features(retail: RetailData,
                                                                          config: OmnirecConfig) -> None:
    """What `omnirec train` gave each member as side features, and what the service builds from the feature
    store for that member, are the same names: tier, lifecycle stage, preferred channel and region."""
    materialize(retail, config)
    interactions = retail.interactions()
    last_ts = int(pc.max(retail.events[Col.TS]).as_py())
    training = member_features(retail.members, interactions.members,
                               member_activity(retail.events, interactions.members, last_ts))
    member_ids = interactions.members.external_ids.tolist()
    trained = [sorted(training.names[training.matrix[row].indices].tolist()) for row in range(len(member_ids))]
    served = asyncio.run(_serving_names(config, member_ids))
    mismatched = [(m, t, s) for m, t, s in zip(member_ids, trained, served, strict=True) if t != s]
    assert not mismatched, f"{len(mismatched)} members differ, e.g. {mismatched[:3]}"
    keys = {name.split("=")[0] for names in served for name in names}
    assert keys == {"tier", "lifecycle_stage", "channel", "region"}
    without_events = np.setdiff1d(member_ids, pc.unique(retail.events[Col.MEMBER_ID].drop_null()).to_numpy(
        zero_copy_only=False))
    assert len(without_events), "the retailer should have members without events (truly cold)"
