"""Append-only decision log: one JSON object per line, one file per UTC day, for audit and later learning.

Each record is written with a single `write` on a file opened with O_APPEND, so lines from several
threads or worker processes never interleave on a local filesystem. The service never deletes or
rewrites a file; retention is the operator's choice (the files are small and compress well; keep at
least as long as the longest campaign plus its measurement window, so holdout lift can be computed).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DecisionLog:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path_for(self, ts: float) -> Path:
        return self.directory / f"decisions-{time.strftime('%Y-%m-%d', time.gmtime(ts))}.jsonl"

    def append(self, record: dict[str, Any]) -> None:
        """`record` must carry `ts` (unix seconds); it picks the day file."""
        line = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
        with self._lock:
            fd = os.open(self.path_for(float(record["ts"])), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record, oldest day first (for audits, tests and training the next uplift model)."""
        for path in sorted(self.directory.glob("decisions-*.jsonl")):
            with path.open() as f:
                for line in f:
                    yield json.loads(line)
