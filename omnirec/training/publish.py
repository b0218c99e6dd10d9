"""`omnirec publish`: the refusal rule shared with training, applied to an already written bundle."""

from __future__ import annotations

from pathlib import Path

from omnirec.bundle.format import Manifest
from omnirec.bundle.registry import BundleRegistry
from omnirec.domain.errors import FailedPrecondition, NotFound


def publish_version(root: Path, version: int | None = None, force: bool = False) -> int:
    """Publish `version` (default: newest); a bundle its publish gate refused needs `force`.

    Bundles written before the next-basket gate carry only `beats_popularity`, which then decides.
    """
    registry = BundleRegistry(root)
    versions = registry.versions()
    if not versions:
        raise NotFound(f"no bundles under {root}; run `omnirec train` first")
    version = versions[-1] if version is None else version
    if version not in versions:
        raise NotFound(f"bundle version {version} not found under {root}")
    manifest = Manifest.read(registry.path(version))
    if not manifest.publishable and not force:
        raise FailedPrecondition(f"v{version} did not pass its publish gate ({manifest.publish_gate}) on the offline "
                                 "evaluation; use --force")
    registry.publish(version)
    return version
