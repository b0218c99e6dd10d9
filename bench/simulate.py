"""Time and peak memory of `omnirec simulate` at demo scale and at 1,000,000 members / 100,000 items.

Each size runs in a fresh subprocess so its peak resident memory is its own.
Run by hand: `.venv/bin/python bench/simulate.py [--sizes demo,1m] [--out /tmp/omnirec-bench-sim]`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

SIZES = {"demo": (1_000, 500), "100k": (100_000, 20_000), "1m": (1_000_000, 100_000)}
RESULTS = Path(__file__).parent / "results" / "simulate.json"


def run_one(members: int, items: int, out: Path) -> dict[str, float]:
    code = (
        "from simulator import SimulationConfig, simulate;"
        f"s = simulate(SimulationConfig(n_members={members}, n_items={items}), {str(out)!r}, progress=False);"
        "print(s.events)"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    disk = sum(f.stat().st_size for f in out.glob("*.parquet"))
    return {"members": members, "items": items, "events": int(done.stdout.split()[-1]), "seconds": seconds,
            "peak_rss_mib": max(peak_kib, before) / 1024, "parquet_mib": disk / 2**20}


def main(
    sizes: Annotated[str, typer.Option(help=f"Comma-separated sizes from {list(SIZES)}.")] = "demo,1m",
    out: Annotated[Path, typer.Option(help="Scratch folder for the generated files.")] = Path("/tmp/omnirec-bench-sim"),
) -> None:
    """Benchmark the simulator; prints a table and writes bench/results/simulate.json."""
    rows = []
    for name in sizes.split(","):
        members, items = SIZES[name]
        rows.append({"size": name, **run_one(members, items, out / name)})
    table = Table(title="omnirec simulate (one process, 2-core machine)")
    for col in ("size", "members", "items", "events", "seconds", "events/s", "peak RSS MiB", "Parquet MiB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["size"], f"{r['members']:,}", f"{r['items']:,}", f"{r['events']:,}", f"{r['seconds']:.1f}",
                      f"{r['events'] / r['seconds']:,.0f}", f"{r['peak_rss_mib']:,.0f}", f"{r['parquet_mib']:,.1f}")
    Console(width=140).print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    typer.run(main)
