"""Time `omnirec train` (the same `training.pipeline.train`) on a large simulated retailer.

Generate the data first, outside the repository, e.g.
    omnirec simulate --members 1000000 --items 100000 --out /tmp/omnirec1m/data
then run `python bench/train_scale.py /tmp/omnirec1m/data [LIGHTFM_EPOCHS] [--no-refit] [--lightfm-members N]
[--windows N] [--eval-members N]` (`train.lightfm.max_members`, `train.ranker.windows`, `train.eval_members`);
each stage is logged as it ends. Prints a table and
writes bench/results/train_scale.json (wall and CPU seconds per stage, the load average before and after,
metrics, index recall, peak RSS, the config used). CPU seconds (this process and its scoring workers) are
what a quiet machine's cores spend; wall time on a shared machine is not.
LightFM dominates at this size and scales linearly with epochs, so fewer epochs (with both cores) can be
timed and the default extrapolated from seconds per epoch.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from omnirec.training.config import TrainConfig
from omnirec.training.pipeline import print_summary, train

RESULTS = Path(__file__).parent / "results" / "train_scale.json"


def main(data_dir: Path, lightfm_epochs: int | None = None, refit: bool = True, lightfm_members: int | None = None,
         windows: int | None = None, eval_members: int | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(message)s")
    logging.getLogger("omnirec.training.pipeline").setLevel(logging.DEBUG)
    with tempfile.TemporaryDirectory(prefix="omnirec-bundles-") as root:
        lightfm: dict[str, int] = {} if lightfm_epochs is None else {"epochs": lightfm_epochs, "num_threads": 2}
        if lightfm_members is not None:
            lightfm["max_members"] = lightfm_members
        ranker = {} if windows is None else {"windows": windows}
        evaluation = {} if eval_members is None else {"eval_members": eval_members}
        config = TrainConfig(bundle_root=Path(root), lightfm=lightfm, ranker=ranker, refit_full=refit, **evaluation)
        load_before = os.getloadavg()
        start = time.perf_counter()
        result = train(data_dir, config, force=True)
        wall = time.perf_counter() - start
        load = {"before": load_before, "after": os.getloadavg()}
        manifest = json.loads((result.path / "manifest.json").read_text())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_summary(result)
    table = Table(title=f"train on {data_dir}: {manifest['counts']} (load average {load['before'][0]:.1f} before, "
                        f"{load['after'][0]:.1f} / {load['after'][1]:.1f} / {load['after'][2]:.1f} after)")
    table.add_column("stage")
    table.add_column("wall s", justify="right")
    table.add_column("CPU s", justify="right")
    for stage, seconds in result.seconds.items():
        table.add_row(stage, f"{seconds:.1f}", f"{result.cpu_seconds[stage]:.1f}")
    table.add_row("wall (with the read)", f"{wall:.1f}", "")
    table.add_row("peak RSS MiB", f"{peak_mib:.0f}")
    Console().print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"data_dir": str(data_dir), "config": manifest["params"],
                                   "counts": manifest["counts"], "wall_s": wall, "load_average": load,
                                   "peak_rss_mib": peak_mib, "seconds": result.seconds,
                                   "cpu_seconds": result.cpu_seconds, "metrics": result.metrics,
                                   "indexes": manifest["indexes"], "library_versions": manifest["library_versions"]},
                                  indent=2))


def option(name: str) -> int | None:
    """The integer after `name` on the command line, if given."""
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else None


if __name__ == "__main__":
    valued = {i + 1 for i, a in enumerate(sys.argv) if a in ("--lightfm-members", "--windows", "--eval-members")}
    args = [a for i, a in enumerate(sys.argv) if i and i not in valued and not a.startswith("--")]
    main(Path(args[0]), int(args[1]) if len(args) > 1 else None, refit="--no-refit" not in sys.argv,
         lightfm_members=option("--lightfm-members"), windows=option("--windows"),
         eval_members=option("--eval-members"))
