"""`omnirec train` and `omnirec publish` wire the CLI to the pipeline and the registry."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from omnirec.bundle import BundleRegistry
from omnirec.cli import app


def test_train_then_publish(small_retail_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data", str(small_retail_dir), "--bundles", str(tmp_path), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "popularity" in result.output
    registry = BundleRegistry(tmp_path)
    assert registry.current_path() == registry.path(1)
    result = runner.invoke(app, ["publish", "--bundles", str(tmp_path), "--version", "1"])
    assert result.exit_code == 0, result.output
    for command in ("train", "publish"):
        assert runner.invoke(app, [command, "--help"]).exit_code == 0
