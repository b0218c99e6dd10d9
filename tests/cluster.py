"""A real 3-master Redis Cluster on free loopback ports, for the tests that run the store on a cluster.

Started as child processes of the test run (never daemonised), so stopping them needs only their pids,
and a crashed run leaves nothing behind but temporary files.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

BUS_OFFSET = 10_000
"""Redis Cluster's node-to-node bus listens on port + 10000; both ports must be free."""


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(n: int) -> list[int]:
    """`n` ports whose cluster-bus ports are free too, chosen by the OS (no fixed range to collide on)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + BUS_OFFSET < 65_536 and port not in ports and _free(port + BUS_OFFSET):
            ports.append(port)
    return ports


class LocalCluster:
    """`masters` redis-server processes in `root`, joined into one cluster with no replicas."""

    def __init__(self, root: Path, masters: int = 3) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli must be on PATH to start a Redis Cluster")
        self.ports = free_cluster_ports(masters)
        self.processes: list[subprocess.Popen[bytes]] = []
        for port in self.ports:
            node_dir = root / str(port)
            node_dir.mkdir(parents=True)
            self.processes.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", "",
                 "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            self._create()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def _create(self) -> None:
        for port in self.ports:
            _wait(lambda p=port: _ask(p, "PING") is True, f"redis-server on port {port}")
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)
        for port in self.ports:
            _wait(lambda p=port: _ask(p, "CLUSTER INFO")["cluster_state"] == "ok", f"cluster state on port {port}")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(10)


def _ask(port: int, command: str) -> object:
    with redis.Redis(port=port, socket_timeout=1) as client:
        return client.execute_command(command)


def _wait(ready: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")
        time.sleep(0.05)
