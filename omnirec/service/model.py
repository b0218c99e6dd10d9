"""The serving model and its hot swap: one attribute holds the current bundle; a reload replaces it.

Requests read `holder.current` once and keep that reference, so a request that started on the old
bundle finishes on it while new requests get the new one; nothing is locked on the request path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omnirec.bundle import ModelBundle
from omnirec.domain.errors import OmnirecError, Unavailable
from omnirec.recommendations.ranking import CategoryIndex
from omnirec.service import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingModel:
    """A loaded bundle plus the lookups the service derives from it once, at load time."""

    bundle: ModelBundle
    categories: CategoryIndex
    version: str
    path: Path

    @property
    def created_at(self) -> float | None:
        """When training wrote the bundle (Unix seconds), from its manifest; None if it does not say."""
        stamp = self.bundle.manifest.created_at
        try:
            return datetime.fromisoformat(stamp).timestamp() if stamp else None
        except ValueError:
            return None


BundleLoader = Callable[[Path], ServingModel]
"""Loads the bundle at a path (blocking: runs in a worker thread, off the event loop)."""


class ModelHolder:
    def __init__(self, current_path: Callable[[], Path | None], load: BundleLoader) -> None:
        self._current_path = current_path
        self._load = load
        self._lock = asyncio.Lock()
        self.current: ServingModel | None = None
        self.loaded = asyncio.Event()
        """Set once the first bundle is serving (health checks report NOT_SERVING until then)."""

    def adopt(self, model: ServingModel) -> None:
        """Serve a bundle loaded elsewhere (by the parent process before it forked the workers)."""
        self.current = model
        self.loaded.set()
        metrics.model_loaded(model.version, model.created_at)

    def get(self) -> ServingModel:
        model = self.current
        if model is None:
            raise Unavailable("no model bundle is loaded yet (run `omnirec train` and `omnirec publish`)")
        return model

    async def reload(self) -> ServingModel:
        """Load the published bundle if it is not the one serving; returns what serves afterwards."""
        async with self._lock:
            path = await asyncio.to_thread(self._current_path)
            if path is None:
                raise Unavailable("no model bundle has been published")
            if self.current is not None and self.current.path == path:
                return self.current
            model = await asyncio.to_thread(self._load, path)
            old, self.current = self.current, model
            self.loaded.set()
            metrics.model_loaded(model.version, model.created_at)
            log.info("model bundle %s loaded from %s (was %s)", model.version, path, old and old.version)
            return model

    async def poll(self, interval_s: float) -> None:
        """Reload whenever a newer bundle is published; a broken bundle is logged and the old one kept."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload()
            except (OmnirecError, OSError, ValueError, KeyError) as exc:
                log.warning("model reload failed, still serving %s: %s", self.current and self.current.version, exc)
