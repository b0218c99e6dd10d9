"""What an import found: each problem as `file:line: field 'name': reason`, and counts per table and reason.

Checks hand over whole masks (one per rule), so finding problems stays vectorised; only the first
`max_errors` problems are turned into text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa


@dataclass
class TableReport:
    """Counts for one input table."""

    name: str
    path: str
    rows_read: int = 0
    duplicates: int = 0
    duplicates_dropped: bool = True
    rejected: Counter[str] = field(default_factory=Counter)
    rows_rejected: int = 0
    """Rows not written because at least one check failed (a row can fail several)."""
    rows_written: int = 0
    notes: list[str] = field(default_factory=list)
    """Rows added or values derived, in words ("4,836 unknown items added")."""


@dataclass
class ImportReport:
    """Every problem found, up to `max_errors` lines, then a count; one `TableReport` per table."""

    max_errors: int = 20
    lines: list[str] = field(default_factory=list)
    problems: int = 0
    tables: dict[str, TableReport] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def table(self, name: str, path: str) -> TableReport:
        self.tables[name] = TableReport(name, path)
        return self.tables[name]

    def add(self, table: TableReport, lines: np.ndarray, field_name: str, reason: str,
            values: pa.Array | None = None) -> None:
        """Record one rule's failures: `lines` are the source lines of the bad rows, in file order."""
        count = len(lines)
        if count == 0:
            return
        self.problems += count
        table.rejected[f"{field_name}: {reason}"] += count
        room = self.max_errors - len(self.lines)
        for i in range(min(room, count)):
            got = f" (got {values[i].as_py()!r})" if values is not None else ""
            self.lines.append(f"{table.path}:{int(lines[i])}: field {field_name!r}: {reason}{got}")

    @property
    def rows_rejected(self) -> int:
        return sum(t.rows_rejected for t in self.tables.values())

    def render(self) -> str:
        """The problems, then a summary table per input table, as plain text."""
        out = list(self.lines)
        if self.problems > len(self.lines):
            out.append(f"... and {self.problems - len(self.lines):,} more problems")
        for t in self.tables.values():
            dup = f", {t.duplicates:,} exact duplicates {'dropped' if t.duplicates_dropped else 'kept'}"
            out.append(f"{t.name} ({t.path}): {t.rows_read:,} rows read{dup}, "
                       f"{t.rows_rejected:,} rejected, {t.rows_written:,} written")
            out.extend(f"  rejected {n:,}: {reason}" for reason, n in t.rejected.most_common())
            out.extend(f"  {note}" for note in t.notes)
        out.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(out)
