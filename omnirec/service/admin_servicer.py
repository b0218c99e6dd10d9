"""AdminService: which bundle serves, and reload on demand (admin role only)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from omnirec.service.config import Role
from omnirec.service.model import ModelHolder, ServingModel
from omnirec.service.registry import ServiceSpec
from omnirec.v1 import admin_pb2, admin_pb2_grpc

SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


def _flatten(metrics: Mapping[str, object], prefix: str = "") -> dict[str, float]:
    """Nested manifest metrics ({"als": {"ndcg@10": 0.3}}) as the flat map of the contract ("als.ndcg@10")."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _timestamp(value: str) -> timestamp_pb2.Timestamp | None:
    """The manifest's ISO 8601 `created_at`; None (the field stays unset) when the manifest has none."""
    if not value:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(value))
    return stamp


def model_info(model: ServingModel) -> admin_pb2.ModelInfo:
    manifest = model.bundle.manifest
    return admin_pb2.ModelInfo(
        version=model.version,
        create_time=_timestamp(manifest.created_at),
        metrics=_flatten(manifest.metrics),
        data_fingerprint=manifest.data_fingerprint,
        n_items=len(model.bundle.items),
        n_members=model.bundle.member_count,
    )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, models: ModelHolder) -> None:
        self._models = models

    async def GetModelInfo(self, request: admin_pb2.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> admin_pb2.GetModelInfoResponse:
        return admin_pb2.GetModelInfoResponse(model=model_info(self._models.get()))

    async def ReloadModel(self, request: admin_pb2.ReloadModelRequest,
                          context: grpc.aio.ServicerContext) -> admin_pb2.ReloadModelResponse:
        return admin_pb2.ReloadModelResponse(model=model_info(await self._models.reload()))


def spec(models: ModelHolder) -> ServiceSpec:
    admin = frozenset({Role.ADMIN})
    return ServiceSpec.of(admin_pb2, "AdminService", admin_pb2_grpc.add_AdminServiceServicer_to_server,
                          AdminServicer(models), {"GetModelInfo": admin, "ReloadModel": admin})
