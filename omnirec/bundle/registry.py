"""Versioned bundle folders under one root, and the atomic `current` pointer the service follows.

Layout: `<root>/v1`, `<root>/v2`, ... (ever-increasing) and `<root>/current`, a relative symlink to one of
them. Publishing writes a new symlink beside the old one and `os.replace`s it over `current`, a single
rename, so a reader sees either the old or the new bundle, never a missing or half-written one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omnirec.domain.errors import NotFound

CURRENT = "current"
_VERSION_DIR = re.compile(r"^v(\d+)$")


class BundleRegistry:
    """The bundle root: lists versions, reserves the next one and publishes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self) -> list[int]:
        """Complete bundle versions on disk, oldest first (temporary build folders are not listed)."""
        if not self.root.exists():
            return []
        found = (_VERSION_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir() and not p.is_symlink())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, version: int) -> Path:
        return self.root / f"v{version}"

    def next_version(self) -> int:
        """One above the highest version on disk, so versions never repeat even after deletions of older ones."""
        versions = self.versions()
        return versions[-1] + 1 if versions else 1

    def publish(self, version: int) -> None:
        """Point `current` at `version` atomically (symlink + rename over the old pointer)."""
        if version not in self.versions():
            raise NotFound(f"bundle version {version} not found under {self.root}")
        tmp = self.root / f".{CURRENT}.{os.getpid()}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(self.path(version).name, tmp)
        os.replace(tmp, self.root / CURRENT)

    def current_path(self) -> Path | None:
        """The published bundle's folder, or None before the first publish."""
        link = self.root / CURRENT
        if not link.is_symlink():
            return None
        return self.root / os.readlink(link)
