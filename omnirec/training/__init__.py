"""Training: interaction weighting, ALS/BPR and LightFM models, offline evaluation, versioned FAISS bundles.

`training.pipeline.train` is the `omnirec train` job; `training.bundle.ModelBundle` and
`training.registry.BundleRegistry` are what the service reads.
"""

from omnirec.training.bundle import ModelBundle
from omnirec.training.config import TrainConfig
from omnirec.training.registry import BundleRegistry

__all__ = ["BundleRegistry", "ModelBundle", "TrainConfig"]
