from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omnirec.domain import DataError, IdMap
from omnirec.domain.readers import Interactions, RetailData, read_events, read_movielens_100k, read_ncf_ml1m
from omnirec.domain.schema import EVENT_SCHEMA

GOOD = {
    "member_id": ["m1", None, "m2"], "anonymous_id": [None, "a1", None], "item_id": ["i1", "i2", None],
    "channel": ["app", "web", "store"], "event_type": ["view", "view", "store_visit"],
    "store_id": [None, None, "s1"], "quantity": [1, 1, 1], "price": [0.0, 0.0, 0.0], "ts": [1, 2, 3],
}


def write_events(tmp_path: Path, **changes: list) -> Path:
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({**GOOD, **changes}, schema=EVENT_SCHEMA), path)
    return path


def test_good_event_log_reads(tmp_path: Path) -> None:
    assert read_events(write_events(tmp_path)).num_rows == 3


@pytest.mark.parametrize(("change", "line", "field"), [
    ({"channel": ["app", "tv", "store"]}, 2, "channel"),
    ({"event_type": ["view", "view", "teleport"]}, 3, "event_type"),
    ({"anonymous_id": [None, None, None], "member_id": [None, None, "m2"]}, 1, "member_id"),
    ({"item_id": ["i1", None, None]}, 2, "item_id"),
    ({"store_id": [None, None, None]}, 3, "store_id"),
    ({"price": [0.0, float("nan"), 0.0]}, 2, "price"),
    ({"quantity": [1, -2, 1]}, 2, "quantity"),
    ({"ts": [1, 2, -3]}, 3, "ts"),
    ({"item_id": ["i1", "i\x1f2", None]}, 2, "item_id"),
    ({"member_id": ["m1", None, "m\n2"]}, 3, "member_id"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path: Path, change: dict, line: int, field: str) -> None:
    path = write_events(tmp_path, **change)
    with pytest.raises(DataError) as err:
        read_events(path)
    assert err.value.line == line and err.value.field == field
    assert f"{path}:{line}" in str(err.value)


def test_csv_lines_count_the_header(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("member_id,anonymous_id,item_id,channel,event_type,store_id,quantity,price,ts\n"
                    "m1,,i1,app,view,,1,0,10\nm1,,i1,fax,view,,1,0,11\n")
    with pytest.raises(DataError, match=r"events.csv:3: field 'channel'"):
        read_events(path)


def test_unknown_column_rejected(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({**GOOD, "colour": ["r", "g", "b"]}), path)
    with pytest.raises(DataError, match="colour"):
        read_events(path)


def test_tsv_bad_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t2\t5\t100\n1\tx\t4\t101\n")
    with pytest.raises(DataError, match=r"u.data:2: field 'item'"):
        read_movielens_100k(tmp_path)


def test_interactions_reject_ids_outside_the_catalogue() -> None:
    events = pa.table(GOOD, schema=EVENT_SCHEMA)
    with pytest.raises(DataError, match="item_id"):
        Interactions.from_events(events, items=IdMap.from_ids(["i2"]))


def test_simulated_data_reads_with_identity_resolution(small_retail_dir: Path) -> None:
    data = RetailData.read(small_retail_dir)
    inter = data.interactions()
    assert len(inter.members) == data.members.num_rows and len(inter.items) == data.items.num_rows
    linked = set(data.identity_links["anonymous_id"].to_pylist())
    anon = data.events.filter(pa.compute.is_valid(data.events["anonymous_id"]))
    resolved = anon.filter(pa.compute.is_valid(anon["member_id"]))
    assert resolved.num_rows > 0 and set(resolved["anonymous_id"].to_pylist()) <= linked
    # every row with a member and an item is in the interaction table: nothing dropped
    both = data.events.filter(pa.compute.and_(pa.compute.is_valid(data.events["member_id"]),
                                               pa.compute.is_valid(data.events["item_id"])))
    assert len(inter) == both.num_rows
    assert inter.members.to_external(inter.member_idx[:5]).tolist() == both["member_id"].to_pylist()[:5]


def test_movielens_100k(shared_data: Path) -> None:
    inter = read_movielens_100k(shared_data / "ml-100k")
    assert (len(inter), len(inter.members), len(inter.items)) == (100_000, 943, 1_682)


def test_ncf_split(shared_data: Path) -> None:
    split = read_ncf_ml1m(shared_data / "ncf-ml-1m")
    assert len(split.train) == 994_169 and split.negatives.shape == (6_040, 99)
    assert len(np.unique(split.test_members)) == 6_040
    # the rebuilt split remaps a few rare items, so a held-out item can rarely reappear among negatives
    assert np.any(split.negatives == split.test_items[:, None], axis=1).mean() < 0.03


def test_idmap_round_trip(tmp_path: Path) -> None:
    m = IdMap.from_values(np.array(["b", "a", "c", "a"]))
    m.save(tmp_path / "ids.npy")
    loaded = IdMap.load(tmp_path / "ids.npy")
    assert loaded.external_ids.tolist() == ["a", "b", "c"] and loaded.get("c") == 2
    with pytest.raises(KeyError):
        loaded.to_internal(["zz"])


def test_live_event_log_joins_the_export(small_retail_dir: Path, tmp_path: Path) -> None:
    """Events the service logged under `events_live/` are read with the export by the next training run."""
    import shutil

    from omnirec.domain.readers import LIVE_EVENTS_DIR

    data_dir = tmp_path / "data"
    shutil.copytree(small_retail_dir, data_dir)
    before = RetailData.read(data_dir).events.num_rows
    live = data_dir / LIVE_EVENTS_DIR
    live.mkdir()
    pq.write_table(pa.table(GOOD, schema=EVENT_SCHEMA), live / "events-1-100.parquet")
    assert RetailData.read(data_dir).events.num_rows == before + 3
    pq.write_table(pa.table({**GOOD, "channel": ["app", "fax", "store"]}, schema=EVENT_SCHEMA),
                   live / "events-1-200.parquet")
    with pytest.raises(DataError, match=r"events-1-200.parquet:2: field 'channel'"):
        RetailData.read(data_dir)
