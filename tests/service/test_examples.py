"""The example clients (examples/client.py, examples/node/client.js) against a real server."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from service_harness import API_KEYS, RunningServer

ROOT = Path(__file__).resolve().parents[2]
NODE_EXAMPLE = ROOT / "examples" / "node"
NODE, NPM = shutil.which("node"), shutil.which("npm")
sys.path.insert(0, str(ROOT / "examples"))


def test_python_client_recommends(server: RunningServer, known_member: str) -> None:
    from client import recommend  # examples/client.py

    reply = recommend(f"127.0.0.1:{server.port}", API_KEYS["app"], known_member, k=5)
    assert len(reply.items.item_ids) == 5 and reply.info.model_version


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The Node example's dependencies, installed once per package-lock.json into a cache directory."""
    if NODE is None or NPM is None:
        pytest.skip("node and npm are not installed: the Node.js example client is not exercised")
    lock = NODE_EXAMPLE / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "omnirec" / f"node-example-{digest}"
    if not (cache / "node_modules" / ".package-lock.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(NODE_EXAMPLE / name, cache / name)
        try:
            subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--silent"], cwd=cache, check=True,
                           capture_output=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"npm could not install the Node example's dependencies (registry unreachable?): {exc}")
    return cache / "node_modules"


def _node(node_modules: Path, server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(NODE), str(NODE_EXAMPLE / "client.js"), "--target", f"127.0.0.1:{server.port}",
                           "--api-key", API_KEYS["app"], *args], env={**os.environ, "NODE_PATH": str(node_modules)},
                          capture_output=True, text=True, timeout=60)


def test_node_client_tracks_recommends_and_reads_error_details(node_modules: Path, server: RunningServer,
                                                               known_member: str, item_id: str) -> None:
    ok = _node(node_modules, server, "--member-id", known_member, "--k", "5", "--view", item_id)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0] == "tracked: 1 accepted, 0 duplicates"
    assert len(lines) == 2 + 5 and all("REASON_" in line for line in lines[2:])

    bad = _node(node_modules, server, "--member-id", known_member, "--k", "0")
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == ["INVALID_ARGUMENT: k: must be between 1 and 200 (got 0)",
                                       "  field k: must be between 1 and 200 (got 0)"]
