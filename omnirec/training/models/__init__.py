"""Recommenders: one class per algorithm behind the `Recommender` contract."""

from omnirec.training.models.base import Recommender, TrainSet
from omnirec.training.models.factorization import ALSRecommender, BPRRecommender, FactorizationRecommender
from omnirec.training.models.hybrid import LightFMRecommender
from omnirec.training.models.popularity import PopularityRecommender, SegmentPopularityRecommender

__all__ = [
    "ALSRecommender",
    "BPRRecommender",
    "FactorizationRecommender",
    "LightFMRecommender",
    "PopularityRecommender",
    "Recommender",
    "SegmentPopularityRecommender",
    "TrainSet",
]
