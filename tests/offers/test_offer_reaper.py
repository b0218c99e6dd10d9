"""The service's background reaper (`service.hold_reaper`) on a real 3-master cluster: a hold left by a client
SIGKILLed mid-decision is settled once `offers.reservation_s` has passed, with no further decision on the offer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from omnirec.feature_store.config import RedisConfig
from omnirec.service.hold_reaper import reap_abandoned_holds
from tests.offers.conftest import NOW, drive
from tests.offers.test_offer_cluster import (  # noqa: F401 (fixtures)
    OFFER,
    RESERVATION_S,
    ClusterEngine,
    cluster_config,
    kill_client_at,
    make_cluster_engine,
    pending_holds,
    wallets,
)
from tests.offers.test_offer_engine import many_members, single_offer


@pytest.mark.parametrize("step, coupon_issued", [("member_issue", False), ("confirm", True)])
def test_the_reaper_settles_a_killed_clients_hold_without_another_decision(
        make_cluster_engine: ClusterEngine, cluster_client: RedisCluster, cluster_config: RedisConfig,  # noqa: F811
        tmp_path: Path, step: str, coupon_issued: bool) -> None:
    """Killed before its coupon, the budget comes back; killed after it, the budget stays spent. Either way
    the hold is settled by the loop alone, and not before its release time."""
    clock = [NOW]
    catalogue = single_offer(tmp_path, "max_count = 1", cap=50)
    engine = make_cluster_engine(many_members(2), catalogue, clock=lambda: clock[0])
    kill_client_at(step, cluster_config, catalogue, tmp_path)
    namespace = cluster_config.namespace
    assert pending_holds(cluster_client, namespace) == 1

    async def body() -> None:
        reaper = asyncio.create_task(reap_abandoned_holds(engine, 0.02))
        try:
            await asyncio.sleep(0.3)  # passes of the loop before the release time: the hold stays
            assert pending_holds(cluster_client, namespace) == 1 and (await engine.store.usage(OFFER)).issued == 1
            clock[0] = NOW + RESERVATION_S + 1
            for _ in range(500):
                if pending_holds(cluster_client, namespace) == 0:
                    break
                await asyncio.sleep(0.02)
        finally:
            reaper.cancel()
        usage = await engine.store.usage(OFFER)
        assert usage.issued == int(coupon_issued) and (usage.reserved_cents > 0) is coupon_issued
        assert len((await wallets(engine, ["m000"]))["m000"]) == int(coupon_issued)

    drive(engine, body)
    assert pending_holds(cluster_client, namespace) == 0
