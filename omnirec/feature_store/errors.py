"""Feature-store errors, as domain errors so the service's one interceptor maps them to gRPC codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from omnirec.domain.errors import FailedPrecondition, Unavailable


class FeatureStoreError(FailedPrecondition):
    """Stored data cannot be served: malformed value or schema-version mismatch."""


class NotMaterialised(FeatureStoreError):
    """Nothing is materialised yet (an empty or flushed Redis): retryable once `omnirec materialize` ran."""

    status_code = Unavailable.status_code


@contextmanager
def redis_unavailable(what: str) -> Iterator[None]:
    """Turn connection failures and timeouts into `Unavailable`, which the service answers degraded."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError) as exc:
        raise Unavailable(f"feature store unavailable during {what}: {exc}") from exc


@contextmanager
def redis_call(what: str) -> Iterator[None]:
    """`redis_unavailable`, and a command Redis refused (a key of the wrong type, a malformed packed value
    found by a script) as `FeatureStoreError`: stored data that cannot be served."""
    with redis_unavailable(what):
        try:
            yield
        except redis.ResponseError as exc:
            raise FeatureStoreError(f"{what}: stored data is malformed or of the wrong type: {exc}") from exc
