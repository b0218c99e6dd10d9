"""`pip install .` from a clean tree gives a working `omnirec` with its stubs, under one top-level name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_under_one_name_and_runs(tmp_path: Path) -> None:
    tree = tmp_path / "clean"  # what a clone would hold: tracked and unignored files, no generated stubs
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    assert not (tree / "omnirec" / "v1").exists()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(tree)], check=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {n for n in names if not n.endswith(".dist-info")} == {"omnirec"}

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import omnirec, omnirec.service.server, omnirec.v1.recommendation_pb2 as pb;"
             "print(omnirec.__file__); print(pb.__file__)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert all(path.startswith(str(site)) for path in out)
    help_text = subprocess.run([sys.executable, "-m", "omnirec", "--help"], cwd=tmp_path, env=env, check=True,
                               capture_output=True, text=True).stdout
    assert "serve" in help_text
