"""Recommenders: one class per algorithm behind the `Recommender` contract."""

from training.models.base import Recommender, TrainSet, top_k
from training.models.factorization import ALSRecommender, BPRRecommender, FactorizationRecommender
from training.models.hybrid import LightFMRecommender
from training.models.popularity import PopularityRecommender, SegmentPopularityRecommender

__all__ = [
    "ALSRecommender",
    "BPRRecommender",
    "FactorizationRecommender",
    "LightFMRecommender",
    "PopularityRecommender",
    "Recommender",
    "SegmentPopularityRecommender",
    "TrainSet",
    "top_k",
]
