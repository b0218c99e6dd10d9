"""`omnirec publish`: the refusal rule shared with training, applied to an already written bundle."""

from __future__ import annotations

import json
from pathlib import Path

from omnirec.domain.errors import FailedPrecondition, NotFound
from omnirec.training.bundle import MANIFEST
from omnirec.training.registry import BundleRegistry


def publish_version(root: Path, version: int | None = None, force: bool = False) -> int:
    """Publish `version` (default: newest); a bundle that did not beat popularity needs `force`."""
    registry = BundleRegistry(root)
    versions = registry.versions()
    if not versions:
        raise NotFound(f"no bundles under {root}; run `omnirec train` first")
    version = versions[-1] if version is None else version
    if version not in versions:
        raise NotFound(f"bundle version {version} not found under {root}")
    manifest = json.loads((registry.path(version) / MANIFEST).read_text())
    if not manifest.get("beats_popularity") and not force:
        raise FailedPrecondition(f"v{version} does not beat popularity on the offline evaluation; use --force")
    registry.publish(version)
    return version
