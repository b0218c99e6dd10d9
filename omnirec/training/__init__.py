"""Training: interaction weighting, ALS/BPR and LightFM models, offline evaluation, bundle building.

`training.pipeline.train` is the `omnirec train` job; it writes bundles through `omnirec.bundle`, which is
all the service reads. Import the submodules you need: this package imports nothing, so reading
`training.config` does not load `implicit` or LightFM.
"""
