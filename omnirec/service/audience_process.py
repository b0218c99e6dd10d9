"""The audience process: campaign jobs (pulls, explains, confirmed sends) run here, not in the serving workers.

A pull over a million members is tens of seconds of Python (profile parsing, the offer rules, redis-py);
on a thread of a serving worker it holds that worker's GIL and its Recommend / NextBestOffer latency
suffers (`bench/audience_isolation.py`). So `omnirec serve` forks one more process before any server
exists, supervised like the workers, at a lower CPU priority (`service.audience_nice`): real-time calls
get the cores first and a campaign takes what is left.

The parent binds a Unix socket in a private folder; the audience process accepts on it and each
`AudienceService` call in a worker is one connection (`AudienceJobs`), carrying pickled domain objects
(`omnirec.audience` types both sides own): the request, then the audience's summary and its rows in the
stream's chunks, or the error to raise. A worker whose caller cancels closes its connection, and a passed
deadline travels with the request: either stops the builder at its next chunk of members.

Whether the audience process is up is a lock, not a connection: the listening socket belongs to the parent
(and is inherited by the workers), so a connection is accepted by the kernel even while no audience process
runs, and waits in the backlog for the replacement. The audience process holds an exclusive `flock` on a file
beside the socket from the moment it accepts calls until it stops; the kernel drops the lock when the process
dies however it dies (`kill -9`, the OOM killer), so a worker that can take a shared lock on that file knows
nobody serves audiences (`AudienceJobs.serving`, a few microseconds, read by the worker's health checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import gc
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnirec.audience import AudienceRequest, AudienceRows, AudienceSummary, Campaigns, MemberVerdict
from omnirec.config import OmnirecConfig
from omnirec.domain.errors import InvalidArgument, OmnirecError, Unavailable
from omnirec.domain.vocab import Channel
from omnirec.service.model import ServingModel

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")
_LIMIT = 1 << 31


@dataclass(frozen=True)
class Pull:
    request: AudienceRequest
    caller: str
    timeout_s: float | None
    """What is left of the caller's deadline (None: none); the audience process stops when it passes."""
    chunk: int


@dataclass(frozen=True)
class Explain:
    request: AudienceRequest
    member_id: str


@dataclass(frozen=True)
class Confirm:
    send_id: str
    offer_id: str
    channel: Channel
    members: Sequence[str]
    holdout: Sequence[str]
    caller: str
    sent_at: float | None


@dataclass(frozen=True)
class _Failure:
    """An `OmnirecError` across the socket (its class may not pickle: the fields say what to raise)."""

    status_code: str
    message: str
    field: str | None = None
    description: str = ""

    @classmethod
    def of(cls, exc: OmnirecError) -> _Failure:
        if isinstance(exc, InvalidArgument):
            return cls(exc.status_code, str(exc), exc.field, exc.description)
        return cls(exc.grpc_status_code(), str(exc))

    def error(self) -> OmnirecError:
        if self.field is not None:
            return InvalidArgument(self.field, self.description)
        return _Relayed(self.status_code, self.message)


class _Relayed(OmnirecError):
    def __init__(self, status_code: str, message: str) -> None:
        self.status_code = status_code
        super().__init__(message)


_END = "end"
Make = Callable[[], Awaitable[tuple[Campaigns, list[Coroutine[Any, Any, None]]]]]
"""Builds the audience process's campaigns, and the background coroutines that keep them current."""


async def _send(writer: asyncio.StreamWriter, message: object) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(body)) + body)
    await writer.drain()


async def _receive(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def _ready_path(socket_path: Path) -> Path:
    """The file the audience process keeps locked while it accepts calls (beside its socket)."""
    return socket_path.with_name("ready.lock")


class AudienceJobs:
    """A serving worker's handle on the audience process: each call is one connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = _ready_path(path)

    def serving(self) -> bool:
        """Whether an audience process is accepting calls now: it holds its lock (see the module docstring)."""
        try:
            fd = os.open(self._ready, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also releases the shared lock when it was granted
        return False

    async def _open(self, message: object) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path), limit=_LIMIT)
        except OSError as exc:
            raise Unavailable(f"the audience process is not running ({exc.strerror})") from None
        await _send(writer, message)
        return reader, writer

    async def _reply(self, reader: asyncio.StreamReader) -> Any:
        try:
            reply = await _receive(reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise Unavailable(f"the audience process went away ({type(exc).__name__})") from None
        if isinstance(reply, _Failure):
            raise reply.error()
        return reply

    async def pull(self, request: AudienceRequest, caller: str, timeout_s: float | None,
                   chunk: int) -> AsyncIterator[AudienceSummary | AudienceRows]:
        """The summary, then the rows `chunk` at a time. Closing the iterator early (the caller cancelled)
        closes the connection, which stops the pull."""
        reader, writer = await self._open(Pull(request, caller, timeout_s, chunk))
        try:
            while (reply := await self._reply(reader)) != _END:
                yield reply
        finally:
            writer.close()

    async def _call(self, message: object) -> Any:
        reader, writer = await self._open(message)
        try:
            return await self._reply(reader)
        finally:
            writer.close()

    async def explain(self, request: AudienceRequest, member_id: str) -> MemberVerdict:
        return await self._call(Explain(request, member_id))  # type: ignore[no-any-return]

    async def confirm(self, send_id: str, offer_id: str, channel: Channel, members: Sequence[str],
                      holdout: Sequence[str], caller: str, sent_at: float | None) -> bool:
        return await self._call(Confirm(send_id, offer_id, channel, members, holdout, caller,  # type: ignore[no-any-return]
                                        sent_at))


class AudienceServer:
    """The audience process's side: answers each connection with the `Campaigns` it was given."""

    def __init__(self, campaigns: Campaigns) -> None:
        self.campaigns = campaigns
        self._pulls: set[threading.Event] = set()

    def stop(self) -> None:
        """Stop every pull at its next chunk (shutting down: nobody will read the rows)."""
        for pull in self._pulls:
            pull.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            message = await _receive(reader)
            if isinstance(message, Pull):
                await self._pull(message, reader, writer)
            else:
                await self._answer(message, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info("audience caller went away")
        except Exception as exc:  # a bug: logged here, INTERNAL to the caller (not UNAVAILABLE: it is no outage)
            log.exception("audience job failed")
            with contextlib.suppress(ConnectionError):
                await _send(writer, _Failure("INTERNAL", f"audience job failed: {type(exc).__name__} (logged)"))
        finally:
            writer.close()

    async def _answer(self, message: Explain | Confirm, writer: asyncio.StreamWriter) -> None:
        try:
            if isinstance(message, Explain):
                reply: object = await asyncio.to_thread(self.campaigns.explain, message.request, message.member_id)
            else:
                reply = await asyncio.to_thread(self.campaigns.confirm, message.send_id, message.offer_id,
                                                message.channel, message.members, message.holdout, message.caller,
                                                message.sent_at)
        except OmnirecError as exc:
            reply = _Failure.of(exc)
        await _send(writer, reply)

    async def _pull(self, message: Pull, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stop = threading.Event()
        ends = None if message.timeout_s is None else time.monotonic() + message.timeout_s

        def cancelled() -> bool:
            return stop.is_set() or (ends is not None and time.monotonic() > ends)

        async def until_hung_up() -> None:
            await reader.read()  # the caller sends nothing more: EOF is the caller going away
            stop.set()

        watch = asyncio.create_task(until_hung_up())
        self._pulls.add(stop)
        try:
            try:
                audience = await asyncio.to_thread(self.campaigns.pull, message.request, message.caller, cancelled)
            except OmnirecError as exc:
                await _send(writer, _Failure.of(exc))
                return
            await _send(writer, audience.summary)
            for rows in audience.chunks(message.chunk):
                if cancelled():
                    return
                await _send(writer, rows)
            await _send(writer, _END)
        finally:
            self._pulls.discard(stop)
            watch.cancel()


class AudienceProcess:
    """The listening socket (bound by the parent, before any worker) and the process body that serves it."""

    def __init__(self, config: OmnirecConfig) -> None:
        self.config = config
        self._owner = os.getpid()
        self._dir = Path(tempfile.mkdtemp(prefix="omnirec-audience-"))
        self.path = self._dir / "jobs.sock"
        _ready_path(self.path).touch()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(64)

    def close(self) -> None:
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def run(self, make: Make) -> None:
        """The process body: lower priority, one BLAS thread, serve until SIGTERM. `make` builds the
        campaigns and the background coroutines that keep them current (`campaign_jobs`)."""
        # What the fork inherited is never collected here: garbage of a parent that had gRPC objects (a test
        # process) would run gRPC's finalisers in a child without gRPC's threads, which can spin forever.
        gc.freeze()
        if sys.platform == "linux":  # SIGTERM when the parent dies, so no audience process outlives it
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != self._owner:
                return
        with contextlib.suppress(OSError):
            Path("/proc/self/comm").write_text("omnirec-audienc")  # `ps`, `top`: which child is which
        os.nice(self.config.service.audience_nice)
        if sys.platform == "linux":
            # SCHED_BATCH as well: a batch task never preempts a task that wakes up, so a worker woken by a
            # request (or Redis's reply) runs at once instead of after the pull's time slice; with its nice
            # level the pull keeps what CPU the workers leave and so still finishes.
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            asyncio.run(self._serve(make))

    async def _serve(self, make: Make) -> None:
        campaigns, background = await make()
        tasks = [asyncio.create_task(c) for c in background]
        jobs = AudienceServer(campaigns)
        server = await asyncio.start_unix_server(jobs.handle, sock=self._listener, limit=_LIMIT)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Opened here, not inherited: a lock belongs to its open file, which no other process may share.
        # Blocking: a worker's test holds the shared lock for microseconds.
        ready = os.open(_ready_path(self.path), os.O_RDONLY)
        fcntl.flock(ready, fcntl.LOCK_EX)
        log.info("audience process %d serving %s", os.getpid(), self.path)
        await stop.wait()
        os.close(ready)  # NOT_SERVING from here on: stopping
        server.close()
        jobs.stop()  # asyncio.run waits for the pulls' threads before this process can exit
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def campaign_jobs(config: OmnirecConfig, preloaded: ServingModel | None = None
                        ) -> tuple[Campaigns, list[Coroutine[Any, Any, None]]]:
    """The campaigns over the published bundle (`preloaded`: the one the parent loaded before forking; else
    loaded now, before the first call is accepted), and the coroutine that follows newer bundles as the
    workers do."""
    from omnirec.service import wiring
    from omnirec.service.bundles import holder_for

    models = holder_for(config.train.bundle_root, config.data_dir, config.recommendations, config.service)
    if preloaded is not None:
        models.adopt(preloaded)

    try:
        await models.reload()
    except OmnirecError as exc:
        log.warning("audience process starting without a model: %s", exc)
    return wiring.campaign_jobs(config, models), [models.poll(config.service.poll_interval_s)]


@contextlib.contextmanager
def running(config: OmnirecConfig, make: Make | None = None
            ) -> Iterator[AudienceJobs]:
    """An audience process for the duration of the block, not restarted if it dies (`omnirec serve` with
    one worker, `omnirec demo`, tests; several workers run it under the supervisor). Call before any grpc
    object or thread exists in this process: it forks."""
    process = AudienceProcess(config)
    gc.collect()  # pending garbage (a test's closed gRPC channels) is collected here, where gRPC runs
    child = multiprocessing.get_context("fork").Process(
        target=process.run, args=(make or functools.partial(campaign_jobs, config),), name="omnirec-audience",
        daemon=True)
    child.start()
    try:
        yield AudienceJobs(process.path)
    finally:
        child.terminate()
        child.join(10)
        if child.is_alive():
            log.error("audience process %s ignored SIGTERM for 10 s: killing it", child.pid)
            child.kill()
            child.join()
        process.close()
