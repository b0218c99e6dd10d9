"""`ServiceSpec`: one servicer, how to add it to a server, and which roles may call each of its methods.

The server factory registers a list of specs, and the auth interceptor reads their role tables, so a
new service is one `spec(...)` line in `service.server.service_specs`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc

from omnirec.service.config import Role

ALL_ROLES = frozenset(Role)
APP_POS_ADMIN = frozenset({Role.APP, Role.POS, Role.ADMIN})


@dataclass(frozen=True)
class ServiceSpec:
    full_name: str
    """Fully qualified service name, e.g. "omnirec.v1.AdminService" (health and reflection list it)."""
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    method_roles: Mapping[str, frozenset[Role]]
    """Full method path ("/omnirec.v1.AdminService/ReloadModel") -> roles allowed to call it."""

    @classmethod
    def of(cls, pb2: ModuleType, service: str, add_to_server: Callable[[Any, grpc.aio.Server], None],
           servicer: Any, roles: Mapping[str, frozenset[Role]]) -> ServiceSpec:
        """Build from the generated module; every method of the service must be given its roles."""
        descriptor = pb2.DESCRIPTOR.services_by_name[service]
        methods = {m.name for m in descriptor.methods}
        if set(roles) != methods:
            raise ValueError(f"{service}: roles must cover exactly the methods {sorted(methods)}, got {sorted(roles)}")
        full = descriptor.full_name
        return cls(full, add_to_server, servicer, {f"/{full}/{m}": r for m, r in roles.items()})
