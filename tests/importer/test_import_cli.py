"""`omnirec import` from the command line, and the CLI's one-line user errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from omnirec.cli import main
from omnirec.domain.clock import parse_time, stale_data_warning
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.readers import EVENTS_FILE, ITEMS_FILE, RetailData
from tests.importer.test_import import EVENTS, ITEMS, MAPPING


def write_source(tmp_path: Path, events: str = EVENTS) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "events.csv").write_text(events)
    (src / "items.csv").write_text(ITEMS)
    (src / "mapping.toml").write_text(MAPPING.format(events_extra="", extra=""))
    return src / "mapping.toml"


def test_import_command_writes_the_data_dir_and_prints_the_summary(tmp_path: Path, capsys) -> None:
    mapping = write_source(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["import", str(mapping), "--out", str(tmp_path / "out"), "--as-of", "2024-03-01"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "events (" in out and "4 rows read" in out and "imported 4 events, 2 members" in out
    assert RetailData.read(tmp_path / "out").events.num_rows == 4


def test_user_errors_print_one_line_and_exit_1(tmp_path: Path, capsys) -> None:
    mapping = write_source(tmp_path, EVENTS.replace("sold_at", "sold_on"))
    with pytest.raises(SystemExit) as done:
        main(["import", str(mapping), "--out", str(tmp_path / "out")])
    assert done.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "column 'sold_at' is not in" in err[0] and "Traceback" not in err[0]
    with pytest.raises(InvalidArgument):
        main(["--debug", "import", str(mapping), "--out", str(tmp_path / "out")])


def test_train_on_a_missing_data_dir_is_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["train", "--data", str(tmp_path / "nowhere"), "--bundles", str(tmp_path / "b")])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and EVENTS_FILE in err and "omnirec import" in err


def test_bad_as_of_is_one_line(tmp_path: Path, capsys) -> None:
    mapping = write_source(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["import", str(mapping), "--out", str(tmp_path / "out"), "--as-of", "yesterday"])
    assert done.value.code == 1 and "--as-of: 'yesterday' is not an ISO 8601" in capsys.readouterr().err


def test_a_data_dir_with_only_events_and_items_reads(tmp_path: Path) -> None:
    mapping = write_source(tmp_path)
    with pytest.raises(SystemExit):
        main(["import", str(mapping), "--out", str(tmp_path / "out"), "--as-of", "2024-03-01"])
    minimal = tmp_path / "minimal"
    minimal.mkdir()
    for name in (EVENTS_FILE, ITEMS_FILE):
        pq.write_table(pq.read_table(tmp_path / "out" / name), minimal / name)
    data = RetailData.read(minimal)
    assert sorted(data.members["member_id"].to_pylist()) == ["c1", "c2"]
    assert data.stores.num_rows == 0 and data.interactions().events.num_rows == 4


def test_clock_parsing_and_stale_warning() -> None:
    assert parse_time("2017-12-31", "as_of") == datetime(2017, 12, 31, tzinfo=UTC)
    assert parse_time("1514678400", "as_of") == datetime(2017, 12, 31, tzinfo=UTC)
    assert parse_time("2017-12-31T01:00:00+01:00", "as_of") == datetime(2017, 12, 31, tzinfo=UTC)
    day = 86_400
    assert stale_data_warning(100 * day, 120 * day, "train") is None
    assert "--as-of 1970-04-11" in stale_data_warning(100 * day, 200 * day, "train")


def test_replay_at_as_of_leaves_out_later_events_and_restages_members(tmp_path: Path) -> None:
    from omnirec.domain.derive import restage
    from omnirec.domain.lifecycle import LifecycleRules

    mapping = write_source(tmp_path)
    with pytest.raises(SystemExit):
        main(["import", str(mapping), "--out", str(tmp_path / "out"), "--as-of", "2024-03-01"])
    data = RetailData.read(tmp_path / "out")
    cut = datetime(2024, 1, 10, tzinfo=UTC).timestamp()
    then = data.until(cut)
    assert then.events.num_rows == 2 and data.until(datetime(2030, 1, 1).timestamp()) is data
    stages = dict(zip(*restage(then.members, then.events, LifecycleRules(), cut).select(
        ["member_id", "lifecycle_stage"]).to_pydict().values(), strict=True))
    assert stages == {"c1": "new", "c2": "new"}  # c1 signed up 5 days before; c2 signs up later
    late = restage(data.members, data.events, LifecycleRules(), datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    assert set(late["lifecycle_stage"].to_pylist()) == {"dormant"}
