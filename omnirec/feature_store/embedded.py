"""The embedded Redis of `make run`: with no `redis.url`, omnirec runs a redis-server itself.

`embedded(config)` yields a config that names a running server: `config` itself when it has a URL; the
server another omnirec command on the same `embedded_path` already runs (that command keeps owning it);
or one started now (`PrivateRedis`, data loaded from and saved to `embedded_path`). The command that
started it shuts it down (SHUTDOWN SAVE, then waits for the process) when its block ends, and the server
dies with it even on SIGKILL, so no redis-server outlives the command or test that started it.
Ownership is an exclusive `flock` on `<embedded_path>.lock`, which holds the server's URL.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from omnirec.domain.errors import Unavailable
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.private_server import PrivateRedis


def _url_of_owner(lock: TextIO, path: str) -> str:
    """The URL the owner writes into the lock file once its server answers."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lock.seek(0)
        url = lock.read().strip()
        if url:
            return url
        time.sleep(0.05)
    raise Unavailable(f"{path}: another omnirec command holds the embedded Redis but never published its URL")


@contextmanager
def embedded(config: RedisConfig) -> Iterator[RedisConfig]:
    """`config` with a `url`: the configured Redis, or the embedded one for as long as the block runs."""
    if config.url is not None:
        yield config
        return
    path = config.embedded_path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield config.model_copy(update={"url": _url_of_owner(lock, str(lock_path))})
            return
        server = PrivateRedis(dbfile=path).start()
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(server.url)
            lock.flush()
            yield config.model_copy(update={"url": server.url})
        finally:
            lock.truncate(0)
            server.stop()
