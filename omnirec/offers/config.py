"""`OfferConfig`: the `[offers]` section of the omnirec config."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from omnirec.domain.vocab import Channel
from omnirec.offers.catalogue import Cap

EXAMPLE_CATALOGUE = Path(__file__).parent / "examples" / "catalogue.toml"

DEFAULT_FATIGUE = {
    Channel.APP: Cap(count=6, period_days=7),
    Channel.MINI_PROGRAM: Cap(count=6, period_days=7),
    Channel.WEB: Cap(count=6, period_days=7),
    Channel.POS: Cap(count=3, period_days=7),
    Channel.STORE: Cap(count=3, period_days=7),
}


class OfferConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    catalogue_path: Path = EXAMPLE_CATALOGUE
    """TOML or JSON offer catalogue; reloaded when its mtime changes (default: the example shipped with the package)."""
    catalogue_poll_s: float = Field(2.0, gt=0)
    """How often the file's mtime is checked."""
    decision_log_dir: Path = Path("var/decisions")
    """Append-only JSON-lines decision log, one file per UTC day."""
    uplift_path: Path | None = None
    """Per-member uplift scores (`omnirec offers train-uplift`); without them coupons are ranked by propensity."""
    fatigue: dict[Channel, Cap] = DEFAULT_FATIGUE
    """Global contact cap per channel: at most `count` offers per member within `period_days`. Caps and
    fatigue periods must fit in the contact ledger's retention (`redis.contact_ttl_s`)."""
    idempotency_days: float = Field(7.0, gt=0)
    """How long a DecideCoupon request id's decision is kept for retries."""
    reservation_s: float = Field(30.0, gt=0)
    """Redis Cluster: how long a DecideCoupon's budget reservation may stay pending before the next decision on
    the offer treats its client as dead and settles it (far above any request's time budget)."""
