"""A real 3-master Redis Cluster on free loopback ports, for the tests that run the store on a cluster.

Each server daemonises with a pid file (so it is no child of the test process, whose own redis-server
children other tests count) and is stopped by that pid.
"""

from __future__ import annotations

import os
import shutil
import signal
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
    """`masters` redis-server processes in `root`, joined into one cluster with no replicas.

    Free ports are only free when chosen: another process (other test runs share the machine) may bind one
    before its server does, so a start that fails is retried on new ports."""

    ATTEMPTS = 3

    def __init__(self, root: Path, masters: int = 3, first_port: int | None = None) -> None:
        """`first_port`: the masters listen on `first_port`, `first_port` + 1, ... (a bench's own range;
        one attempt), else on free ports."""
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli must be on PATH to start a Redis Cluster")
        attempts = self.ATTEMPTS if first_port is None else 1
        for attempt in range(1, attempts + 1):
            self.ports = free_cluster_ports(masters) if first_port is None else \
                list(range(first_port, first_port + masters))
            self.pid_files: list[Path] = []
            try:
                for port in self.ports:
                    node_dir = root / f"{port}-{attempt}"
                    node_dir.mkdir(parents=True)
                    self.pid_files.append(node_dir / "redis.pid")
                    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", "",
                                    "--appendonly", "no", "--daemonize", "yes", "--pidfile", str(self.pid_files[-1]),
                                    "--logfile", str(node_dir / "redis.log")], check=True, timeout=30)
                self._create()
                return
            except BaseException as exc:
                self.stop()
                if attempt == attempts or not isinstance(exc, RuntimeError | subprocess.SubprocessError):
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
        pids = []
        for pid_file in self.pid_files:
            try:
                pids.append(int(pid_file.read_text()))
            except (OSError, ValueError):  # never started
                continue
            os.kill(pids[-1], signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
            time.sleep(0.05)


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
