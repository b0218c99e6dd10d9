"""The servicers' view of the feature store for reads: async, bounded by the request's time budget, degradable.

Request reads (a member's features, stock) run on the event loop through `AsyncFeatureReader`, under
`asyncio.timeout`: no thread hop per request, and a slow or dead Redis never holds a request past its
budget. Failures surface as `domain.errors.Unavailable`, which the recommendation servicer turns into a
degraded answer. Writes (live events, links) are `service.ingest`'s, on the synchronous `client`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from omnirec.domain.errors import Unavailable
from omnirec.domain.vocab import AnonymousId, ItemId, MemberId, StoreId
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import FeatureStoreError
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.model import TS
from omnirec.feature_store.reader import AsyncFeatureReader, RequestFeatures
from omnirec.recommendations.ranking import MemberContext
from omnirec.service import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


def _member_context(features: RequestFeatures) -> MemberContext:
    cold_start = features.profile.cold_start() if features.profile is not None else None
    purchased = features.member.purchased if features.member else {}
    lists = features.member.top_lists if features.member else None
    return MemberContext(member_id=features.member_id, profile=cold_start, purchased=purchased, lists=lists)


class Features:
    """One per worker process: the Redis clients (asyncio for request reads, `client` for `service.ingest`'s
    writes) and the feature store's reader."""

    def __init__(self, client: redis.Redis | RedisCluster, async_client: redis.asyncio.Redis | AsyncRedisCluster,
                 config: RedisConfig) -> None:
        self.client = client
        self._async_client = async_client
        self._config = config
        self._reader = AsyncFeatureReader(async_client, config)
        self._pointer = Keys(config.namespace).pointer()

    async def warm_up(self) -> None:
        """Fetch a cluster's slot map and open a connection to each primary before the first request,
        which would otherwise pay for them inside its deadline. Failing here only logs: a Redis that is
        down at start-up makes answers degraded, not the server dead."""
        if not isinstance(self._async_client, AsyncRedisCluster):
            return
        try:
            async with asyncio.timeout(4 * self._config.connect_timeout_s):
                await self._async_client.initialize()
                await asyncio.gather(*(node.execute_command("PING") for node in self._async_client.get_primaries()))
        except (TimeoutError, redis.RedisError) as exc:
            log.warning("Redis Cluster not reachable at start-up (%s); requests retry it", exc)

    async def _within(self, budget_s: float, read: Awaitable[T], what: str = "") -> T:
        """`read` cut at `budget_s`; a named read (`what`) is timed for the feature-read metrics."""
        start = time.perf_counter()
        timed_out = False
        try:
            async with asyncio.timeout(budget_s):
                return await read
        except TimeoutError:
            timed_out = True
            raise Unavailable(f"feature store did not answer within {budget_s * 1000:.0f} ms") from None
        finally:
            if what:
                metrics.feature_read(what, time.perf_counter() - start, timed_out)

    async def generation(self, budget_s: float) -> tuple[int, float | None]:
        """The generation readers are pointed at and when it was switched in (Unix seconds), for freshness."""
        try:
            generation, ts = await self._within(budget_s, self._async_client.hmget(self._pointer, ["generation", TS]))
        except redis.RedisError as exc:
            raise Unavailable(f"feature store pointer: {exc}") from exc
        if generation is None:
            raise Unavailable("no materialised features")
        return int(generation), None if ts is None else float(ts)

    async def member(self, member_id: MemberId | None, anonymous_id: AnonymousId | None,
                     budget_s: float, top_lists: bool = False) -> MemberContext:
        """Profile and purchases of the member (resolved from the anonymous id when linked), and with
        `top_lists` their precomputed lists (member state in the store), all in one round trip.

        Unavailable when Redis is down or slow, or holds nothing servable (no or malformed materialisation).
        """
        try:
            features = await self._within(
                budget_s, self._reader.read_request(member_id, anonymous_id, member_top=top_lists), "member")
        except FeatureStoreError as exc:
            raise Unavailable(str(exc)) from exc
        return _member_context(features)

    async def purchased(self, member_id: MemberId, budget_s: float) -> MemberContext:
        """Only what the purchase filter needs, for a member the model already knows (no profile read)."""
        try:
            purchased = await self._within(budget_s, self._reader.purchased(member_id), "purchased")
        except FeatureStoreError as exc:
            raise Unavailable(str(exc)) from exc
        return MemberContext(member_id=member_id, purchased=purchased)

    async def in_stock(self, item_ids: list[ItemId], store_id: StoreId | None, budget_s: float) -> np.ndarray:
        """Mask over `item_ids`: on hand at `store_id`, or online when None."""
        try:
            return await self._within(budget_s, self._reader.in_stock(item_ids, store_id), "stock")
        except FeatureStoreError as exc:
            raise Unavailable(str(exc)) from exc

    async def close(self) -> None:
        self._reader.close()
        await self._async_client.aclose()
        self.client.close()
