"""Config section `[recommendations]`: what the service never recommends, whatever the models say."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RecommendationConfig(BaseModel):
    """Items no answer may contain: fuel, carrier bags, deposits, zero-price lines. Applied to every
    Recommend, SimilarItems and RecommendForBasket answer, on the precomputed lists too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    never_items: tuple[str, ...] = ()
    """Item ids never recommended."""
    never_categories: tuple[str, ...] = ()
    """Category paths never recommended, with everything under them ("KIOSK-GAS" covers "KIOSK-GAS/...")."""
    never_zero_price: bool = False
    """Never recommend items whose catalogue price is 0 (bags, deposits, free samples)."""
