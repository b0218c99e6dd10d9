"""Next-best-offer and coupon decisions: catalogue, eligibility and contact rules, scoring, budgets, uplift.

`offers.policy` and `offers.catalogue` are pure; `offers.store` owns the offer state in Redis; `offers.engine`
ties them together for the gRPC servicer; `offers.uplift` trains the incrementality model. Nothing here
imports grpc. Only the light, pure modules are re-exported, so reading the config stays cheap.
"""

from omnirec.offers.catalogue import Catalogue, CatalogueError, CatalogueSource, Offer, OfferKind, load_catalogue
from omnirec.offers.config import OfferConfig
from omnirec.offers.policy import MemberView, Rule, rank_offers

__all__ = [
    "Catalogue",
    "CatalogueError",
    "CatalogueSource",
    "MemberView",
    "Offer",
    "OfferConfig",
    "OfferKind",
    "Rule",
    "load_catalogue",
    "rank_offers",
]
