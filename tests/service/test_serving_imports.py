"""A serving process loads only what it serves: the training libraries stay out of every worker and CLI call."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TRAINING_LIBRARIES = ("implicit", "lightfm")

PROBE = """
import json, sys
try:
    {code}
except SystemExit:
    pass
sys.stdout = sys.__stdout__
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True,
                         check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize("code", [
    "import omnirec.service.server",
    "import omnirec.config",
    "sys.argv = ['omnirec', '--help']; sys.stdout = open('/dev/null', 'w'); "
    "from omnirec.cli import app; app()",
])
def test_serving_entry_points_do_not_import_training_libraries(code: str) -> None:
    modules = loaded_modules(code)
    assert not {m.split(".")[0] for m in modules} & set(TRAINING_LIBRARIES)
    assert not {m for m in modules if m.startswith(("omnirec.training.models", "omnirec.training.pipeline"))}


def test_the_probe_sees_a_training_import() -> None:
    """The check above can fail: importing the training pipeline does load both libraries."""
    modules = loaded_modules("import omnirec.training.pipeline")
    assert set(TRAINING_LIBRARIES) <= {m.split(".")[0] for m in modules}
