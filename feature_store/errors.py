"""Feature-store errors, as domain errors so the service's one interceptor maps them to gRPC codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from domain.errors import FailedPrecondition, Unavailable


class FeatureStoreError(FailedPrecondition):
    """Stored data cannot be served: malformed value, schema-version mismatch or nothing materialised."""


@contextmanager
def redis_unavailable(what: str) -> Iterator[None]:
    """Turn connection failures and timeouts into `Unavailable`, which the service answers degraded."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError) as exc:
        raise Unavailable(f"feature store unavailable during {what}: {exc}") from exc
