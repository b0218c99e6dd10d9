"""Model bundles: the versioned folders training writes and serving reads.

Neither side imports the other: training (`omnirec.training.pipeline`) builds a `BundleArtifacts` and calls
`write_bundle`; the service opens the published folder with `ModelBundle.load`. `BundleRegistry` owns the
version folders and the atomic `current` pointer. Nothing here imports a training library.
"""

from omnirec.bundle.format import Array, BundleArtifacts, Index, Manifest, Sparse, write_bundle
from omnirec.bundle.reader import ModelBundle
from omnirec.bundle.registry import BundleRegistry

__all__ = ["Array", "BundleArtifacts", "BundleRegistry", "Index", "Manifest", "ModelBundle", "Sparse", "write_bundle"]
