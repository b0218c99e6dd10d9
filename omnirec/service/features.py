"""The servicers' view of the feature store: async, bounded by the request's time budget, degradable.

Request reads (a member's features, stock) run on the event loop through `AsyncFeatureReader`, under
`asyncio.timeout`: no thread hop per request, and a slow or dead Redis never holds a request past its
budget. Writes (live events, links) use the synchronous `feature_store` on a small thread pool.
Failures surface as `domain.errors.Unavailable`, which the recommendation servicer turns into a
degraded answer and the event servicer into UNAVAILABLE (events cannot be applied without Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pyarrow as pa
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from omnirec.domain.errors import Unavailable
from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.profile import ColdStartProfile
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import AnonymousId, ItemId, MemberId, StoreId
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect, connect_async
from omnirec.feature_store.errors import FeatureStoreError, redis_unavailable
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.live import LiveUpdater
from omnirec.feature_store.reader import AsyncFeatureReader, RequestFeatures
from omnirec.recommendations.ranking import MemberContext

T = TypeVar("T")


def _member_context(features: RequestFeatures) -> MemberContext:
    profile = features.profile
    cold_start = None
    if profile is not None:
        cold_start = ColdStartProfile(tier=profile.tier, lifecycle_stage=profile.lifecycle_stage.value,
                                      channel=profile.preferred_channel and profile.preferred_channel.value)
    purchased = tuple(features.member.purchased_items) if features.member else ()
    return MemberContext(member_id=features.member_id, profile=cold_start, purchased=purchased)


class Features:
    """One per worker process: Redis clients (asyncio for reads, sync for writes), the feature store's
    reader and live updater, and a thread pool for the writes."""

    def __init__(self, client: redis.Redis | RedisCluster, async_client: redis.asyncio.Redis | AsyncRedisCluster,
                 config: RedisConfig, live: LiveUpdater, threads: int = 8) -> None:
        self._client = client
        self._async_client = async_client
        self._config = config
        self._keys = Keys(config.namespace)
        self._reader = AsyncFeatureReader(async_client, config)
        self._live = live
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="features")

    @classmethod
    def connect(cls, config: RedisConfig, tiers: TierLadder, rules: LifecycleRules) -> Features:
        """Connects lazily: a Redis that is down at start-up only makes answers degraded."""
        client = connect(config)
        return cls(client, connect_async(config, client), config, LiveUpdater(client, config, tiers, rules))

    async def _within(self, budget_s: float, read: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(budget_s):
                return await read
        except TimeoutError:
            raise Unavailable(f"feature store did not answer within {budget_s * 1000:.0f} ms") from None

    async def _call(self, budget_s: float, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await self._within(budget_s, loop.run_in_executor(self._pool, functools.partial(fn, *args)))

    async def member(self, member_id: MemberId | None, anonymous_id: AnonymousId | None,
                     budget_s: float) -> MemberContext:
        """Profile and purchases of the member (resolved from the anonymous id when linked).

        Unavailable when Redis is down or slow, or holds nothing servable (no or malformed materialisation).
        """
        try:
            features = await self._within(budget_s, self._reader.read_request(member_id, anonymous_id))
        except FeatureStoreError as exc:
            raise Unavailable(str(exc)) from exc
        return _member_context(features)

    async def purchased(self, member_id: MemberId, budget_s: float) -> MemberContext:
        """Only what the purchase filter needs, for a member the model already knows (no profile read)."""
        try:
            purchased = await self._within(budget_s, self._reader.purchased(member_id))
        except FeatureStoreError as exc:
            raise Unavailable(str(exc)) from exc
        return MemberContext(member_id=member_id, purchased=purchased)

    async def in_stock(self, item_ids: list[ItemId], store_id: StoreId | None, budget_s: float) -> np.ndarray:
        """Mask over `item_ids`: on hand at `store_id`, or online when None."""
        try:
            return await self._within(budget_s, self._reader.in_stock(item_ids, store_id))
        except FeatureStoreError as exc:
            raise Unavailable(str(exc)) from exc

    async def apply_events(self, events: pa.Table, event_ids: list[str], budget_s: float) -> list[bool]:
        """Apply the events whose id was never seen; returns which rows were fresh (the others are retries)."""
        return await self._call(budget_s, self._apply_events, events, event_ids)

    def _apply_events(self, events: pa.Table, event_ids: list[str]) -> list[bool]:
        # The contract de-duplicates by event_id (a retry may differ in server-filled fields such as ts), so
        # ids are claimed first in the feature store's `seen` key space, then only fresh rows are applied.
        claims = [self._keys.seen(f"event_id:{event_id}") for event_id in event_ids]
        pipe = self._client.pipeline(transaction=False)
        for key in claims:
            pipe.set(key, 1, nx=True, ex=self._config.dedup_ttl_s)
        with redis_unavailable("event id claims"):
            fresh = [bool(reply) for reply in pipe.execute()]
        if any(fresh):
            try:
                self._live.apply(events.filter(pa.array(fresh)))
            except (Unavailable, FeatureStoreError):
                # Release the claims so the client's retry is applied, not skipped as a duplicate.
                with contextlib.suppress(redis.RedisError):
                    self._client.delete(*[key for key, ok in zip(claims, fresh, strict=True) if ok])
                raise
        return fresh

    async def link(self, anonymous_id: AnonymousId, member_id: MemberId, budget_s: float) -> int:
        """Link a visitor to a member; returns how many recent anonymous items were credited."""
        return await self._call(budget_s, self._live.link, anonymous_id, member_id)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self._async_client.aclose()
        self._client.close()
