"""`omnirec train` and `omnirec publish` wire the CLI to the pipeline and the registry."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from omnirec.bundle import BundleRegistry
from omnirec.cli import app


def test_train_then_publish(small_retail_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data", str(small_retail_dir), "--bundles", str(tmp_path), "--seed", "1"])
    # the 1,000-member retailer's served list does not clear the strongest next-basket baseline: refused
    assert result.exit_code == 1, result.output
    assert "popularity" in result.output and "next basket" in result.output and "not published" in result.output
    registry = BundleRegistry(tmp_path)
    assert registry.current_path() is None
    result = runner.invoke(app, ["publish", "--bundles", str(tmp_path), "--version", "1"])
    assert result.exit_code != 0 and "publish gate" in str(result.exception)
    result = runner.invoke(app, ["publish", "--bundles", str(tmp_path), "--version", "1", "--force"])
    assert result.exit_code == 0, result.output
    assert registry.current_path() == registry.path(1)
    for command in ("train", "publish"):
        assert runner.invoke(app, [command, "--help"]).exit_code == 0
