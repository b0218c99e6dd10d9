"""Run a real grpc.aio server on its own event loop thread, so plain synchronous tests can call it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import pkgutil
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

import omnirec.v1
from omnirec.config import OmnirecConfig
from omnirec.domain.readers import RetailData
from omnirec.domain.vocab import Col
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect
from omnirec.feature_store.materialize import Materializer, compute_features
from omnirec.service import audience_process
from omnirec.service.config import Role, ServiceConfig
from omnirec.service.server import ServingState, serve
from omnirec.training.config import TrainConfig

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a daemon thread; `run` submits a coroutine and waits for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class RunningServer:
    """A started server (state loaded, background tasks running) on a free loopback port, with its audience
    process (forked from the test process first: what a test patches before, it runs with)."""

    def __init__(self, config: OmnirecConfig, retail: RetailData) -> None:
        self.config = config
        self.retail = retail
        self._audience = contextlib.ExitStack()
        self.state = ServingState.create(config, self._audience.enter_context(audience_process.running(config)))
        self.loop = LoopThread()
        self.server, self.port = self.loop.run(self._start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    async def _start(self) -> tuple[grpc.aio.Server, int]:
        await self.state.start()
        server, port = await serve(self.state, port=0)
        await server.start()
        return server, port

    def stop(self) -> None:
        self.channel.close()

        async def _stop() -> None:
            await self.server.stop(1)
            await self.state.close()

        self.loop.run(_stop())
        self.loop.close()
        self._audience.close()

    def purchased(self, member_id: str) -> set[str]:
        ev = self.retail.events
        mask = pc.and_(pc.equal(ev[Col.MEMBER_ID], member_id), pc.equal(ev[Col.EVENT_TYPE], "purchase"))
        return set(_column(ev.filter(mask), Col.ITEM_ID).tolist())

    def stock(self, store_id: str, item_id: str) -> int:
        inv = self.retail.inventory
        rows = inv.filter(pc.and_(pc.equal(inv["store_id"], store_id), pc.equal(inv["item_id"], item_id)))
        return int(pc.sum(rows["quantity"]).as_py() or 0)

    def category(self, item_id: str) -> str:
        items = self.retail.items
        return str(items.filter(pc.equal(items["item_id"], item_id))["category"][0])


def materialize(retail: RetailData, config: OmnirecConfig) -> None:
    """Load the retailer's features into the test's Redis namespace with the feature store's own job."""
    client = connect(config.redis)
    Materializer(client, config.redis).load(compute_features(retail, config.tiers, config.lifecycle))
    client.close()


PROTO_MODULES = [importlib.import_module(f"omnirec.v1.{m.name}") for m in pkgutil.iter_modules(omnirec.v1.__path__)
                 if m.name.endswith("_pb2")]
METHODS: dict[str, descriptor.MethodDescriptor] = {
    f"/{s.full_name}/{m.name}": m for module in PROTO_MODULES
    for s in module.DESCRIPTOR.services_by_name.values() for m in s.methods}
"""Every RPC of the public contract by its full path, so tests that cover "every RPC" pick up new ones."""



def call_raw(channel: grpc.Channel, method: str, body: bytes, metadata: tuple[tuple[str, str], ...],
             timeout: float = 10) -> None:
    """Send raw bytes to `method` (as a client with hand-made or corrupted bodies would); a streaming
    answer is read to its end. Errors raise `grpc.RpcError`."""
    if METHODS[method].server_streaming:
        for _ in channel.unary_stream(method)(body, metadata=metadata, timeout=timeout):
            pass
    else:
        channel.unary_unary(method)(body, metadata=metadata, timeout=timeout)


API_KEYS = {"app": "test-app-key", "pos": "test-pos-key", "campaign": "test-campaign-key", "admin": "test-admin-key"}


def service_config(data_dir: Path, bundle_root: Path, redis: RedisConfig, event_dir: Path,
                   poll_interval_s: float = 0.2) -> OmnirecConfig:
    return OmnirecConfig(
        data_dir=data_dir, train=TrainConfig(bundle_root=bundle_root), redis=redis,
        service=ServiceConfig(host="127.0.0.1", port=0, workers=1, poll_interval_s=poll_interval_s,
                              event_log_dir=event_dir, event_log_flush_rows=1,
                              api_keys={key: Role(role) for role, key in API_KEYS.items()}))


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False).astype(str)


AUDIENCE_COMM = "omnirec-audienc"
"""What the audience process calls itself in /proc (15 characters at most)."""


def serve_children(pid: int) -> tuple[list[int], list[int]]:
    """The workers and the audience process(es) of the `omnirec serve` running as `pid`."""
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def comm(child: int) -> str:
        try:
            return Path(f"/proc/{child}/comm").read_text().strip()
        except FileNotFoundError:
            return ""

    audience = [c for c in children if comm(c) == AUDIENCE_COMM]
    return [c for c in children if c not in audience], audience


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Until `omnirec serve` (running as `proc`) answers its health check SERVING on `port`."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.time() + timeout_s
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.time() < deadline and proc.poll() is None, "omnirec serve did not become healthy"
            time.sleep(0.2)


def serve_toml(path: Path, data_dir: Path, bundle_root: Path, redis: RedisConfig, port: int, event_dir: Path,
               **service: object) -> Path:
    """A config file for `omnirec serve` in a subprocess: 2 workers on `port`, the test keys; `service` adds
    `[service]` settings (TOML literals: strings quoted by the caller)."""
    keys = "\n".join(f'"{key}" = "{role}"' for role, key in API_KEYS.items())
    extra = "\n".join(f"{k} = {v}" for k, v in service.items())
    path.write_text(f"""data_dir = "{data_dir}"
[train]
bundle_root = "{bundle_root}"
[redis]
url = "{redis.url}"
namespace = "{redis.namespace}"
[service]
host = "127.0.0.1"
port = {port}
workers = 2
event_log_dir = "{event_dir}"
{extra}
[service.api_keys]
{keys}
""")
    return path
