"""Time `omnirec train` (the same `training.pipeline.train`) on a large simulated retailer.

Generate the data first, outside the repository, e.g.
    omnirec simulate --members 1000000 --items 100000 --out /tmp/omnirec1m/data
then run `python bench/train_scale.py /tmp/omnirec1m/data`. Prints a table and writes
bench/results/train_scale.json (timings per stage, metrics, index recall, peak RSS).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from training.config import TrainConfig
from training.pipeline import print_summary, train

RESULTS = Path(__file__).parent / "results" / "train_scale.json"


def main(data_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="omnirec-bundles-") as root:
        config = TrainConfig(bundle_root=Path(root))
        start = time.perf_counter()
        result = train(data_dir, config, force=True)
        wall = time.perf_counter() - start
        manifest = json.loads((result.path / "manifest.json").read_text())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_summary(result)
    table = Table(title=f"train on {data_dir}: {manifest['counts']}")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in result.seconds.items():
        table.add_row(stage, f"{seconds:.1f}")
    table.add_row("wall", f"{wall:.1f}")
    table.add_row("peak RSS MiB", f"{peak_mib:.0f}")
    Console().print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"data_dir": str(data_dir), "counts": manifest["counts"], "wall_s": wall,
                                   "peak_rss_mib": peak_mib, "seconds": result.seconds, "metrics": result.metrics,
                                   "indexes": manifest["indexes"], "library_versions": manifest["library_versions"]},
                                  indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
