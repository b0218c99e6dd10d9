"""`RedisConfig`: the `[redis]` section of the omnirec config (connection, namespace, TTLs, list bounds)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from omnirec.domain.clock import DAY


class RedisConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(None, description="redis://, rediss://, unix:// or redis+cluster:// URL; "
                                              "None: omnirec runs an embedded redis-server persisted to "
                                              "`embedded_path` (`feature_store.embedded`)")
    cluster: bool = Field(False, description="treat `url` as a Redis Cluster entry point")
    embedded_path: Path = Field(Path("var/redis.db"), description="database file of the embedded Redis")
    namespace: str = Field("omnirec", pattern=r"^[A-Za-z0-9_.-]+$", description="key prefix of this deployment")
    socket_timeout_s: float = Field(0.5, gt=0, description="per-command timeout: fail fast, the service degrades")
    connect_timeout_s: float = Field(0.5, gt=0, description="TCP connect timeout")
    retries: int = Field(0, ge=0, description="retries after a connection error (0: fail on the first)")
    bulk_timeout_s: float = Field(60.0, gt=0, description="socket timeout while bulk-loading a materialisation")
    feature_ttl_s: int | None = Field(
        None, gt=0, description="TTL of materialised and live-updated feature keys; None (as Feast's default): "
                                "they live until the next switch expires their generation")
    old_generation_ttl_s: int = Field(600, gt=0,
                                      description="grace TTL of the previous generation after a switch")
    identity_ttl_s: int = Field(365 * DAY, gt=0, description="retention of an anonymous id -> member link")
    dedup_ttl_s: int = Field(2 * DAY, gt=0, description="how long a live event id is remembered for dedup")
    contact_ttl_s: int = Field(180 * DAY, gt=0, description="contact ledger retention")
    wallet_ttl_s: int = Field(365 * DAY, gt=0, description="coupon wallet retention after its last write")
    recent_items: int = Field(50, ge=1, description="recent items kept per member, newest first")
    purchased_items: int = Field(200, ge=1, description="purchased items kept per member (most recent)")
    batch_members: int = Field(10_000, ge=100, description="members per pipelined flush when materialising")
