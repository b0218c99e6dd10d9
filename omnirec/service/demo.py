"""The serving end of `omnirec demo`: start the server, answer one request with `examples/client.py`, stop."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from pathlib import Path

from omnirec.bundle.reader import member_ids
from omnirec.config import OmnirecConfig
from omnirec.service import audience_process
from omnirec.service.audience_process import AudienceJobs
from omnirec.service.config import Role
from omnirec.service.server import ServingState, serve

log = logging.getLogger(__name__)

CLIENT = Path(__file__).resolve().parents[2] / "examples" / "client.py"


async def _serve_and_ask(config: OmnirecConfig, audience: AudienceJobs, api_key: str) -> int:
    state = ServingState.create(config, audience)
    await state.start()
    server, port = await serve(state, port=0)
    await server.start()
    try:
        members = member_ids(state.models.get().bundle.path)  # also when the replica holds no member ids
        member_id = str(members[len(members) // 2])
        log.info("demo: asking for member %s with %s", member_id, CLIENT)
        client = await asyncio.create_subprocess_exec(sys.executable, str(CLIENT), "--target", f"127.0.0.1:{port}",
                                                      "--api-key", api_key, "--member-id", member_id)
        return await client.wait()
    finally:
        await server.stop(1)
        await state.close()


def serve_demo(config: OmnirecConfig) -> int:
    """Serve the published bundle in-process on a free loopback port for one example request.

    With no API key configured, a one-off app key is generated for this run (and printed), never stored.
    """
    keys = dict(config.service.api_keys)
    api_key = next((k for k, role in keys.items() if role is Role.APP), None)
    if api_key is None:
        api_key = secrets.token_urlsafe(16)
        keys[api_key] = Role.APP
        print(f"demo: generated a one-off API key for role app: {api_key}")
    service = config.service.model_copy(update={"api_keys": keys, "host": "127.0.0.1", "port": 0})
    config = config.model_copy(update={"service": service})
    with audience_process.running(config) as audience:
        return asyncio.run(_serve_and_ask(config, audience, api_key))
