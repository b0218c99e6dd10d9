"""Time and peak memory of `omnirec import` on the full Complete Journey (1.47 M purchase lines and, with the
shipped mapping's `[promotions]`, 20.9 M promotion rows).

Baseline, measured in the same run and alternated with the import: reading the source tables with pyarrow
and writing them back as Parquet (no mapping, no checks), i.e. the I/O floor of any import.
Each run is a fresh subprocess that reports its own peak resident memory and CPU seconds (on a machine
other jobs keep busy, CPU seconds compare; wall seconds do not).
Run by hand: `.venv/bin/python bench/import.py [--rounds 2]` (needs the `data` extra).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results" / "import.json"

IMPORT = """
import resource, time, sys
from datetime import datetime, UTC
from pathlib import Path
from omnirec.domain import LifecycleRules, TierLadder
from omnirec.importer import Mapping, import_data, shipped_mapping
from omnirec.importer.completejourney import data_dir
t = time.perf_counter()
r = import_data(Mapping.load(shipped_mapping("completejourney")), data_dir(), Path(sys.argv[1]), TierLadder(),
                LifecycleRules(), as_of=datetime(2018, 1, 2, tzinfo=UTC), force=True)
s = time.perf_counter() - t
rows = sum(r.report.tables[name].rows_read for name in ("events", "promotions") if name in r.report.tables)
u = resource.getrusage(resource.RUSAGE_SELF)
print(s, u.ru_utime + u.ru_stime, rows, r.report.rows_rejected, u.ru_maxrss)
"""

BASELINE = """
import resource, time, sys
from pathlib import Path
import pyarrow.parquet as pq
from omnirec.importer.completejourney import data_dir
t = time.perf_counter()
for name in ("transactions", "products", "promotions"):
    table = pq.read_table(data_dir() / f"{name}.parquet")
    pq.write_table(table, Path(sys.argv[1]) / f"{name}.parquet")
    del table
s = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_SELF)
print(s, u.ru_utime + u.ru_stime, sum(pq.read_metadata(data_dir() / f"{name}.parquet").num_rows
                                      for name in ("transactions", "promotions")), 0, u.ru_maxrss)
"""


def run_one(code: str, out: Path) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", code, str(out)], check=True, capture_output=True, text=True)
    seconds, cpu, rows, rejected, peak_kib = done.stdout.split()[-5:]
    return {"seconds": float(seconds), "cpu_seconds": float(cpu), "rows": int(rows), "rejected": int(rejected),
            "peak_rss_mib": int(peak_kib) / 1024}


def main(rounds: Annotated[int, typer.Option(help="Alternating rounds of import and baseline.")] = 2) -> None:
    runs: dict[str, list[dict[str, float]]] = {"import": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, code in (("import", IMPORT), ("baseline", BASELINE)):
                runs[name].append(run_one(code, Path(tmp) / f"{name}-{r}"))
    summary = {}
    for name, rs in runs.items():
        seconds = statistics.median(x["seconds"] for x in rs)
        summary[name] = {"median_seconds": seconds, "rows": rs[0]["rows"], "rows_per_s": rs[0]["rows"] / seconds,
                         "median_cpu_seconds": statistics.median(x["cpu_seconds"] for x in rs),
                         "peak_rss_mib": max(x["peak_rss_mib"] for x in rs), "rejected": rs[0]["rejected"],
                         "runs": rs}
    ratio = summary["import"]["median_seconds"] / summary["baseline"]["median_seconds"]
    cpu_ratio = summary["import"]["median_cpu_seconds"] / summary["baseline"]["median_cpu_seconds"]
    table = Table(title=f"Complete Journey import ({rounds} alternating rounds, medians)")
    for col in ("run", "rows", "seconds", "CPU seconds", "rows/s", "peak RSS MiB", "rejected"):
        table.add_column(col, justify="right")
    for name, s in summary.items():
        table.add_row(name, f"{s['rows']:,}", f"{s['median_seconds']:.1f}", f"{s['median_cpu_seconds']:.1f}",
                      f"{s['rows_per_s']:,.0f}",
                      f"{s['peak_rss_mib']:,.0f}", f"{s['rejected']:,}")
    Console().print(table)
    Console().print(f"import / baseline time: {ratio:.1f}x, CPU: {cpu_ratio:.1f}x")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({**summary, "import_over_baseline": ratio, "import_over_baseline_cpu": cpu_ratio},
                                  indent=2))


if __name__ == "__main__":
    typer.run(main)
