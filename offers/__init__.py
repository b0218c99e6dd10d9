"""Next-best-offer and coupon decisions: catalogue, eligibility and contact rules, scoring, budgets, uplift.

`offers.policy` and `offers.catalogue` are pure; `offers.budget` holds the Redis state; `offers.engine`
ties them together for the gRPC servicer. Nothing here imports grpc.
"""

from offers.catalogue import Catalogue, CatalogueError, CatalogueSource, Offer, OfferKind, load_catalogue
from offers.config import OfferConfig
from offers.engine import CouponDecision, ItemCatalogue, NextBestOffers, OfferEngine
from offers.policy import MemberView, Rule, rank_offers

__all__ = [
    "Catalogue",
    "CatalogueError",
    "CatalogueSource",
    "CouponDecision",
    "ItemCatalogue",
    "MemberView",
    "NextBestOffers",
    "Offer",
    "OfferConfig",
    "OfferEngine",
    "OfferKind",
    "Rule",
    "load_catalogue",
    "rank_offers",
]
