"""Logging for the service and the batch jobs: JSON lines for machines, plain text for a terminal.

Every record gets the request id and method of the RPC it was logged in (a `contextvars` variable set by
`service.telemetry.TelemetryInterceptor`), so a warning deep in a request can be joined to its access log
line. Batch jobs log each stage with its duration (`stage`), with the same field names.

JSON (python-json-logger): one object per line with `ts` (ISO 8601, UTC), `level`, `logger`, `pid`, `message`
and the record's fields (`request_id`, `method`, `status`, `duration_ms`, `member_id`, `decision_id`,
`model_version`, `job`, `stage`, `seconds`, ...).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict
from pythonjsonlogger.json import JsonFormatter


class LoggingConfig(BaseModel):
    """The `[logging]` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["auto", "json", "text"] = "auto"
    """`auto`: text when stderr is a terminal, JSON lines otherwise (a container, a log shipper)."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: Literal["all", "errors", "off"] = "errors"
    """One line per RPC (`all`), only for RPCs that fail or answer degraded (`errors`), or none. `errors` by
    default: a line per call costs a worker 15-25% of a Recommend call's CPU at full load, while the metrics
    count and time every call and the decision log keeps every offer decision; `all` is for debugging."""
    member_ids: bool = False
    """Whether access log lines carry the member id (personal data: off unless your policy allows it)."""


@dataclass(slots=True)
class RequestContext:
    request_id: str
    method: str
    request: object = None
    """The decoded request message, once the API interceptor decoded it (`note_request`)."""


request_context: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("request", default=None)
"""The RPC being served on this task (None outside requests, e.g. in batch jobs)."""


def note_request(request: object) -> None:
    """Remember the current RPC's decoded request, for its access log line and metrics labels."""
    ctx = request_context.get()
    if ctx is not None:
        ctx.request = request


class _RequestFields(logging.Filter):
    """Adds the current request's id and method to every record logged while serving it."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = request_context.get()
        if ctx is not None and not hasattr(record, "request_id"):
            record.request_id = ctx.request_id
            record.method = ctx.method
        return True


class _Json(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (stdlib name)
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def json_formatter() -> logging.Formatter:
    return _Json("{asctime}{levelname}{name}{process}{message}", style="{",
                 rename_fields={"asctime": "ts", "levelname": "level", "name": "logger", "process": "pid"})


def text_formatter() -> logging.Formatter:
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup(config: LoggingConfig) -> None:
    """Log to stderr in the configured format (CLI start-up). Like `logging.basicConfig`, it leaves a root
    logger that something else already configured (a test runner, an embedding application) alone."""
    root = logging.getLogger()
    if root.handlers:
        return
    use_json = config.format == "json" or (config.format == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter() if use_json else text_formatter())
    handler.addFilter(_RequestFields())
    root.addHandler(handler)
    root.setLevel(config.level)


def stage_done(log: logging.Logger, job: str, name: str, seconds: float, **fields: object) -> None:
    """One stage of a batch job finished: `{"job": "train", "stage": "fit_als", "seconds": 12.3, ...}`."""
    log.info("%s: %s took %.2f s", job, name, seconds,
             extra={"job": job, "stage": name, "seconds": round(seconds, 3), **fields})


def job_done(log: logging.Logger, job: str, stages: Mapping[str, float], **fields: object) -> None:
    """Log every stage of a finished job with its duration (jobs that time their stages themselves)."""
    for name, seconds in stages.items():
        stage_done(log, job, name, seconds, **fields)


@contextmanager
def stage(log: logging.Logger, job: str, name: str, **fields: object) -> Iterator[None]:
    """Time a block as one stage of a batch job and log it when it ends."""
    start = time.perf_counter()
    yield
    stage_done(log, job, name, time.perf_counter() - start, **fields)
