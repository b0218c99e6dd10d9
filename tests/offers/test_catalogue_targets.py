"""`omnirec check-catalogue` checks offer targets against the imported items, in one report with field errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omnirec.cli import main
from omnirec.domain import TierLadder
from omnirec.offers.catalogue import CatalogueError, check_catalogue

ITEMS = pa.table({"item_id": ["i1", "i2"], "category": ["food/fruit", "home/kitchen"], "brand": ["acme", "zen"]})
OFFER = """
[[offers]]
id = "{id}"
name = "x"
kind = "amount_off"
amount = 5
min_spend = 25
target = {target}
channels = ["pos"]
valid_from = 2025-01-01T00:00:00Z
valid_until = {until}
budget = {{ max_count = 10 }}
value = 3
base_response = 0.1
"""


def catalogue(tmp_path: Path, *offers: tuple[str, str, str]) -> Path:
    path = tmp_path / "offers.toml"
    path.write_text("".join(OFFER.format(id=i, target=t, until=u) for i, t, u in offers))
    return path


def test_every_unknown_target_and_field_error_in_one_report(tmp_path: Path) -> None:
    path = catalogue(tmp_path,
                     ("ok", '{ scope = "categories", ids = ["food/fruit"] }', "2026-01-01T00:00:00Z"),
                     ("cat", '{ scope = "categories", ids = ["food/fruit", "toys"] }', "2026-01-01T00:00:00Z"),
                     ("brand", '{ scope = "brands", ids = ["nobody"] }', "2026-01-01T00:00:00Z"),
                     ("item", '{ scope = "items", ids = ["i9"] }', "2026-01-01T00:00:00Z"),
                     ("dates", '{ scope = "basket" }', "2024-01-01T00:00:00Z"))
    with pytest.raises(CatalogueError) as err:
        check_catalogue(path, TierLadder(), ITEMS)
    assert err.value.errors[0].startswith("offers[4] (dates)") and "valid_until must be after" in err.value.errors[0]
    assert err.value.errors[1:] == [
        "offers[1] (cat).target.ids: 'toys' is not a known category in the imported items",
        "offers[2] (brand).target.ids: 'nobody' is not a known brand in the imported items",
        "offers[3] (item).target.ids: 'i9' is not a known item in the imported items",
    ]
    good = catalogue(tmp_path, ("ok", '{ scope = "brands", ids = ["zen"] }', "2026-01-01T00:00:00Z"))
    assert len(check_catalogue(good, TierLadder(), ITEMS).offers) == 1
    assert len(check_catalogue(path.parent / "offers.toml", TierLadder(), None).offers) == 1


def test_cli_checks_targets_against_the_data_dir(tmp_path: Path, capsys) -> None:
    pq.write_table(ITEMS, tmp_path / "items.parquet")
    path = catalogue(tmp_path, ("cat", '{ scope = "categories", ids = ["toys"] }', "2026-01-01T00:00:00Z"))
    with pytest.raises(SystemExit) as done:
        main(["check-catalogue", str(path), "--data", str(tmp_path)])
    assert done.value.code == 1 and "'toys' is not a known category" in capsys.readouterr().out


def test_shipped_templates_parse(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "omnirec" / "offers" / "examples"
    for name in ("template.toml", "completejourney.toml"):
        assert check_catalogue(examples / name, TierLadder(), None).offers
