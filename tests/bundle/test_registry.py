"""Versions only go up and `current` moves atomically; refusing to publish a model that loses to popularity."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from omnirec.bundle import BundleRegistry, Manifest
from omnirec.domain.errors import FailedPrecondition, NotFound
from omnirec.training.publish import publish_version


def make_bundle(root: Path, version: int, beats: bool = True) -> None:
    path = root / f"v{version}"
    path.mkdir(parents=True)
    Manifest(version=version, beats_popularity=beats, complement_blend=0.7).write(path)


def test_versions_and_pointer(tmp_path: Path) -> None:
    reg = BundleRegistry(tmp_path)
    assert reg.next_version() == 1 and reg.current_path() is None
    make_bundle(tmp_path, 1)
    make_bundle(tmp_path, 2)
    (tmp_path / ".v3.tmp").mkdir()
    assert reg.versions() == [1, 2] and reg.next_version() == 3
    reg.publish(1)
    assert reg.current_path() == tmp_path / "v1"
    reg.publish(2)
    assert os.readlink(tmp_path / "current") == "v2" and reg.current_path() == reg.path(2)
    with pytest.raises(NotFound):
        reg.publish(9)
    assert reg.current_path() == reg.path(2)


def test_readers_never_see_a_missing_pointer(tmp_path: Path) -> None:
    reg = BundleRegistry(tmp_path)
    make_bundle(tmp_path, 1)
    make_bundle(tmp_path, 2)
    reg.publish(1)
    seen: set[str] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(os.readlink(tmp_path / "current"))  # raises if the link were ever absent

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(300):
        reg.publish(1 + i % 2)
    stop.set()
    reader.join()
    assert seen <= {"v1", "v2"}


def test_publish_refuses_a_model_that_loses_to_popularity(tmp_path: Path) -> None:
    make_bundle(tmp_path, 1, beats=False)
    with pytest.raises(FailedPrecondition, match="popularity"):
        publish_version(tmp_path)
    assert publish_version(tmp_path, force=True) == 1
    with pytest.raises(NotFound):
        publish_version(tmp_path / "empty")
