"""`omnirec import`: a retailer's own export (CSV or Parquet, any column names) into omnirec's data directory.

`mapping.Mapping` is the mapping file, `source.Source` reads and checks one input file, `run.import_data`
does the whole import; `mappings/` holds ready mappings (Complete Journey).
"""

from importlib import resources
from pathlib import Path

from omnirec.importer.mapping import Mapping
from omnirec.importer.run import ImportFailed, ImportResult, import_data


def shipped_mapping(name: str) -> Path | None:
    """The mapping shipped under `name` (e.g. "completejourney"), or None."""
    path = Path(str(resources.files("omnirec.importer") / "mappings" / f"{name}.toml"))
    return path if path.exists() else None


__all__ = ["ImportFailed", "ImportResult", "Mapping", "import_data", "shipped_mapping"]
