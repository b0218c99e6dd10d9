"""Connection factory: one Redis or a Redis Cluster (the embedded one runs on a URL too, `feature_store.embedded`),
all failing fast.

Every client gets the configured socket timeouts and no silent retries, so a dead Redis surfaces as a
`redis.ConnectionError`/`TimeoutError` within `socket_timeout_s`; the reader turns that into
`domain.errors.Unavailable`.
"""

from __future__ import annotations

from functools import cache

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import HIREDIS_AVAILABLE
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from omnirec.domain.errors import Unavailable
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import redis_unavailable

_CLUSTER_SCHEMES = {"redis+cluster://": "redis://", "rediss+cluster://": "rediss://"}


def is_cluster(config: RedisConfig) -> bool:
    return config.cluster or any((config.url or "").startswith(s) for s in _CLUSTER_SCHEMES)


def _plain_url(url: str) -> str:
    for scheme, plain in _CLUSTER_SCHEMES.items():
        if url.startswith(scheme):
            return plain + url[len(scheme):]
    return url


def connect(config: RedisConfig, socket_timeout_s: float | None = None) -> redis.Redis | RedisCluster:
    """A client for `config`; `socket_timeout_s` overrides the per-command timeout (bulk loads need more)."""
    timeout = socket_timeout_s or config.socket_timeout_s
    retry = Retry(NoBackoff(), config.retries)
    if config.url is None:
        raise ValueError("redis.url is not set: run the embedded Redis with feature_store.embedded.embedded(config)")
    if is_cluster(config):
        url = _plain_url(config.url)
        with redis_unavailable("cluster discovery"):
            try:  # the cluster client asks a node for the slot map while it is built
                return RedisCluster.from_url(url, socket_timeout=timeout,
                                             socket_connect_timeout=config.connect_timeout_s, retry=retry)
            except RedisClusterException as exc:
                raise Unavailable(f"Redis Cluster at {config.url} cannot be reached: {exc}") from exc
    return redis.Redis.from_url(config.url, socket_timeout=timeout, socket_connect_timeout=config.connect_timeout_s,
                                retry=retry)


def connect_async(config: RedisConfig) -> redis.asyncio.Redis | AsyncRedisCluster:
    """An asyncio client for request reads on the service's event loop.

    Nothing is contacted here: connections open on first use, on the loop that uses them; a cluster's slot
    map is fetched then too.
    """
    kw = {"socket_timeout": config.socket_timeout_s, "socket_connect_timeout": config.connect_timeout_s,
          "retry": AsyncRetry(NoBackoff(), config.retries)}
    if config.url is None:
        raise ValueError("redis.url is not set: run the embedded Redis with feature_store.embedded.embedded(config)")
    if is_cluster(config):
        return AsyncRedisCluster.from_url(_plain_url(config.url), **kw)
    client = redis.asyncio.Redis.from_url(config.url, **kw)
    pool = client.connection_pool
    if HIREDIS_AVAILABLE:
        pool.connection_class = _hiredis_packing(pool.connection_class)
    return client


@cache
def _hiredis_packing(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """`connection_class` packing commands with hiredis, in C, as redis-py's synchronous connections do
    (`redis.connection.HiredisRespSerializer`); its asyncio ones pack in Python, which was about half of
    the client's CPU time for a request's read (a pipeline of a few commands with many arguments)."""
    serializer = redis.connection.HiredisRespSerializer()

    def pack_command(self: AbstractConnection, *args: object) -> list[bytes]:
        return serializer.pack(*args)

    return type(f"Hiredis{connection_class.__name__}", (connection_class,), {"pack_command": pack_command})
