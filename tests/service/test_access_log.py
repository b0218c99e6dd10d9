"""Which calls the access log keeps under each `[logging] access_log` setting."""

from __future__ import annotations

import logging

import grpc
import pytest

from omnirec.logs import LoggingConfig
from omnirec.service.telemetry import _access_log
from omnirec.v1 import common_pb2, recommendation_pb2


def _lines(caplog: pytest.LogCaptureFixture, setting: str, code: grpc.StatusCode,
           response: recommendation_pb2.RecommendResponse | None) -> list[logging.LogRecord]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="omnirec.access"):
        _access_log(LoggingConfig(access_log=setting), "Recommend", recommendation_pb2.RecommendRequest(),
                    response, code, 0.002, "req-1")
    return [r for r in caplog.records if r.name == "omnirec.access"]


def test_errors_setting_keeps_failed_and_degraded_calls_only(caplog: pytest.LogCaptureFixture) -> None:
    ok = recommendation_pb2.RecommendResponse(info=common_pb2.ResponseInfo(model_version="3"))
    degraded = recommendation_pb2.RecommendResponse(info=common_pb2.ResponseInfo(degraded=True))

    assert LoggingConfig().access_log == "errors"
    assert _lines(caplog, "errors", grpc.StatusCode.OK, ok) == []
    [line] = _lines(caplog, "errors", grpc.StatusCode.OK, degraded)
    assert line.degraded is True and line.request_id == "req-1"  # type: ignore[attr-defined]
    [line] = _lines(caplog, "errors", grpc.StatusCode.INVALID_ARGUMENT, None)
    assert line.status == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    [line] = _lines(caplog, "all", grpc.StatusCode.OK, ok)
    assert line.model_version == "3"  # type: ignore[attr-defined]
    assert _lines(caplog, "off", grpc.StatusCode.INTERNAL, None) == []
