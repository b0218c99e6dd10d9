"""One pipelined asyncio connection to a single Redis, for the service's hottest read (a member's purchased
list with the generation pointer, one `EVAL`).

Why: redis-py's asyncio client spends several times the CPU of the command itself per call (a pool
checkout, a retry wrapper, a timeout task per send and per read); for the intents that read the purchased
list that was the largest part of a request's cost (`bench/recommend_cost.py`). Here a call is one
`transport.write` of a command packed by hiredis and one future resolved by the protocol when hiredis has
parsed the reply: concurrent calls on an event loop share one TCP connection and are answered in order.

Failure semantics are the feature store's: a connection that cannot be made within `connect_timeout_s`, or
that drops, fails every pending call with `redis.ConnectionError` (the next call reconnects); a call not
answered within `socket_timeout_s` raises `redis.TimeoutError`; an error reply raises `redis.ResponseError`.
A call that times out or whose caller is cancelled (its deadline) leaves its reply to be read and dropped,
so every later reply still goes to its own call. Only plain `redis://` URLs on one Redis; a cluster, TLS or
a Unix socket keep redis-py (`PipelinedConnection.supports`).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.connection import parse_url

from omnirec.feature_store.config import RedisConfig


class _Protocol(asyncio.Protocol):
    """Replies matched to calls in order; a lost connection fails every call still waiting."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=redis.ResponseError)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self.lost: redis.ConnectionError | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future = self._waiting.popleft()
                if not future.done():  # a caller that gave up: its reply is read and dropped
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.close(redis.ConnectionError(f"unreadable reply from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(redis.ConnectionError(f"connection to Redis lost{f': {exc}' if exc else ''}"))

    def close(self, why: redis.ConnectionError) -> None:
        if self.lost is None:
            self.lost = why
        if self._transport is not None:
            self._transport.close()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        if self.lost is not None or self._transport is None:
            future.set_exception(self.lost or redis.ConnectionError("not connected to Redis"))
            return future
        self._waiting.append(future)
        self._transport.write(hiredis.pack_command(args))
        return future

    def send_many(self, commands: Sequence[tuple[Any, ...]]) -> list[asyncio.Future[Any]]:
        """`send` for several commands in one `write` (a pipeline: one round trip, replies in order)."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        if self.lost is not None or self._transport is None:
            for future in futures:
                future.set_exception(self.lost or redis.ConnectionError("not connected to Redis"))
            return futures
        self._waiting.extend(futures)
        self._transport.write(b"".join([hiredis.pack_command(args) for args in commands]))
        return futures


class PipelinedConnection:
    """Commands on one lazily opened connection per event loop (a loop other than the last one used opens
    its own)."""

    def __init__(self, config: RedisConfig) -> None:
        params = parse_url(config.url or "")
        self._host, self._port = params.get("host", "localhost"), int(params.get("port", 6379))
        self._auth = [p for p in (params.get("username"), params.get("password")) if p]
        self._db = int(params.get("db", 0) or 0)
        self._connect_timeout_s = config.connect_timeout_s
        self._timeout_s = config.socket_timeout_s
        self.name = f"omnirec-reads-{os.getpid()}"
        """The connection's `CLIENT SETNAME`: `CLIENT LIST` tells the service's pipelined reads apart."""
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()

    @staticmethod
    def supports(config: RedisConfig) -> bool:
        """A plain TCP URL of one Redis: what this connection speaks."""
        return not config.cluster and (config.url or "").startswith("redis://")

    async def execute(self, *args: Any) -> Any:
        """The reply to one command (hiredis types: bytes, int, lists, None)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None or asyncio.get_running_loop() is not self._loop:
            protocol = await self._connected()  # connected calls skip this coroutine: one per call adds up
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await protocol.send(args)
        except TimeoutError:
            raise redis.TimeoutError(f"Redis at {self._host}:{self._port} did not answer within "
                                     f"{self._timeout_s} s") from None
        if isinstance(reply, redis.ResponseError):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The replies to several commands sent in one write (a non-transactional pipeline); the first error
        reply is raised once every reply has arrived, so the connection stays in step."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None or asyncio.get_running_loop() is not self._loop:
            protocol = await self._connected()  # as `execute`: connected calls skip this coroutine
        futures = protocol.send_many(commands)
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = [await future for future in futures]
        except TimeoutError:
            raise redis.TimeoutError(f"Redis at {self._host}:{self._port} did not answer within "
                                     f"{self._timeout_s} s") from None
        except redis.ConnectionError:
            for future in futures:  # the same failure is on every later call: retrieved, not logged as lost
                if future.done() and not future.cancelled():
                    future.exception()
            raise
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    async def _connected(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a connection (and a lock) belongs to the loop that made it
            self._loop, self._protocol, self._lock = loop, None, asyncio.Lock()
        if self._protocol is not None and self._protocol.lost is None:
            return self._protocol
        async with self._lock:
            if self._protocol is None or self._protocol.lost is not None:
                self._protocol = await self._connect()
            return self._protocol

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(_Protocol, self._host, self._port)
                setup = [("AUTH", *self._auth)] if self._auth else []
                setup += [("SELECT", self._db)] if self._db else []
                setup.append(("CLIENT", "SETNAME", self.name))
                for command in setup:
                    reply = await protocol.send(command)
                    if isinstance(reply, redis.ResponseError):
                        why = redis.ConnectionError(f"Redis refused {command[0]}: {reply}")
                        protocol.close(why)
                        raise why
        except (OSError, TimeoutError) as exc:
            raise redis.ConnectionError(f"cannot connect to Redis at {self._host}:{self._port}: {exc!r}") from None
        return protocol

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close(redis.ConnectionError("connection closed"))
            self._protocol = None
