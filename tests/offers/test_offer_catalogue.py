"""Catalogue validation (every error listed) and hot reload (a bad file keeps the previous catalogue)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omnirec.offers.catalogue import CatalogueError, CatalogueSource, OfferKind, load_catalogue
from tests.offers.conftest import EXAMPLE

BAD = """
[[offers]]
id = "a"
kind = "percent_off"
amount = 150
target = { scope = "categories" }
eligibility = { min_tier = "diamond", stages = ["sleepy"] }
channels = ["app"]
valid_from = 2025-01-01T00:00:00Z
valid_until = 2030-01-01T00:00:00Z
value = 10
colour = "red"

[[offers]]
id = "b"
kind = "amount_off"
amount = -5
target = { scope = "basket" }
channels = []
valid_from = 2025-01-01T00:00:00Z
valid_until = 2024-01-01T00:00:00Z
value = 10
holdout_share = 1.5

[[offers]]
id = "c"
kind = "gift"
amount = 5
target = { scope = "basket" }
channels = ["pos"]
valid_from = 2025-01-01T00:00:00Z
valid_until = 2030-01-01T00:00:00Z
value = 10

[[offers]]
id = "c"
kind = "gift"
amount = 5
target = { scope = "basket" }
channels = ["fax"]
valid_from = 2025-01-01T00:00:00Z
valid_until = 2030-01-01T00:00:00Z
value = 10
"""


def test_example_catalogue_loads() -> None:
    cat = load_catalogue(EXAMPLE)
    assert len(cat.offers) >= 6
    assert {o.kind for o in cat.offers} == set(OfferKind)
    assert len(cat.version) == 12


def test_invalid_catalogue_lists_every_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    with pytest.raises(CatalogueError) as info:
        load_catalogue(path)
    text = "\n".join(info.value.errors)
    expected = [
        "offers[0] (a).target: Value error, a categories target needs at least one id",
        "offers[0] (a).eligibility.min_tier: Value error, unknown tier 'diamond'",
        "offers[0] (a).eligibility.stages.0",
        "offers[0] (a).colour: Extra inputs are not permitted",
        "offers[1] (b).amount",
        "offers[1] (b).channels",
        "offers[1] (b).holdout_share",
        "offers[3] (c).channels.0",
    ]
    for line in expected:
        assert line in text, f"missing {line!r} in:\n{text}"
    assert str(info.value).startswith("catalogue: ")


def test_duplicate_ids_and_cross_field_rules_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    good = EXAMPLE.read_text()
    path.write_text(good + "\n[[offers]]" + good.split("\n[[offers]]")[1])
    with pytest.raises(CatalogueError, match="duplicate offer id"):
        load_catalogue(path)
    percent = good.replace('max_cost = 12\n', '', 1)
    path.write_text(percent)
    with pytest.raises(CatalogueError, match="percent_off needs max_cost"):
        load_catalogue(path)


def test_hot_reload_keeps_previous_catalogue_on_error(catalogue_path: Path) -> None:
    source = CatalogueSource(catalogue_path, poll_seconds=0.0)
    first = source.current()
    catalogue_path.write_text(BAD)
    os.utime(catalogue_path, ns=(1, 1))
    assert source.current() is first
    assert source.last_error is not None and len(source.last_error.errors) >= 8
    catalogue_path.write_text(EXAMPLE.read_text().replace("value = 18", "value = 19"))
    os.utime(catalogue_path, ns=(2, 2))
    reloaded = source.current()
    assert reloaded.version != first.version
    assert reloaded.get("welcome-10off50").value == 19  # type: ignore[union-attr]
    assert source.last_error is None


def test_check_catalogue_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from omnirec.cli import app

    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    runner = CliRunner()
    ok = runner.invoke(app, ["check-catalogue", str(EXAMPLE)])
    assert ok.exit_code == 0 and "offers OK" in ok.output
    failed = runner.invoke(app, ["check-catalogue", str(bad)])
    assert failed.exit_code == 1
    assert "unknown tier 'diamond'" in failed.output and "duplicate offer id" in failed.output
