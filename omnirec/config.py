"""The one typed config object, read once at start-up from a TOML file and the environment.

Each component owns its section's model; this module only composes them. Nothing below `main()`
reads the environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.tiers import TierLadder
from omnirec.feature_store.config import RedisConfig
from omnirec.logs import LoggingConfig
from omnirec.offers.config import OfferConfig
from omnirec.recommendations.config import RecommendationConfig
from omnirec.service.config import ServiceConfig
from omnirec.spark.config import SparkConfig
from omnirec.tracing import TracingConfig
from omnirec.training.config import TrainConfig

CONFIG_ENV = "OMNIREC_CONFIG"


class OmnirecConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Path("var/data")
    """Where the event log and entity tables live (simulator output by default)."""
    as_of: datetime | None = None
    """The batch jobs' clock (`domain.clock`): lifecycle, recency and RFM are computed at this time; unset
    means now. Set it to the end of a historical data set to replay it."""
    tiers: TierLadder = TierLadder()
    lifecycle: LifecycleRules = LifecycleRules()
    service: ServiceConfig = ServiceConfig()
    train: TrainConfig = TrainConfig()
    redis: RedisConfig = RedisConfig()
    offers: OfferConfig = OfferConfig()
    recommendations: RecommendationConfig = RecommendationConfig()
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    spark: SparkConfig = SparkConfig()

    @field_validator("as_of")
    @classmethod
    def _utc_unless_zoned(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v

    @classmethod
    def load(cls, path: Path | None = None, env: Mapping[str, str] | None = None) -> OmnirecConfig:
        """File (argument, else $OMNIREC_CONFIG, else defaults), then environment overrides."""
        env = os.environ if env is None else env
        path = path or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
        data: dict[str, object] = tomllib.loads(Path(path).read_text()) if path else {}
        for var, (section, key) in ENV_OVERRIDES.items():
            if env.get(var):
                data.setdefault(section, {})[key] = env[var]  # type: ignore[index]
        if env.get("OMNIREC_DATA_DIR"):
            data["data_dir"] = env["OMNIREC_DATA_DIR"]
        return cls.model_validate(data)


ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "REDIS_URL": ("redis", "url"),
}
"""Environment variable -> (config section, field), e.g. REDIS_URL -> ("redis", "url")."""
