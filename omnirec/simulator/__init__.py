"""A seeded, deterministic omnichannel retailer: entities, behaviour and coupon experiments as Parquet.

`simulate(config, out_dir)` writes the files that `domain.readers.RetailData` reads.
"""

from omnirec.simulator.config import SimulationConfig
from omnirec.simulator.run import SimulationSummary, simulate

__all__ = ["SimulationConfig", "SimulationSummary", "simulate"]
