"""`omnirec import` on small hand-made files: every check, every default, the report and the clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omnirec.domain import LifecycleRules, TierLadder
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.readers import RetailData
from omnirec.importer import ImportFailed, Mapping, import_data

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
EVENTS = """\
customer,sku,shop,qty,amount,sold_at
c1,A,s1,2,3.00,2024-01-05 10:00:00
c1,B,s2,1,5.50,2024-01-06 11:00:00
c1,A,s1,1,1.50,2024-02-20 09:30:00
c2,B,s2,1,5.50,2024-02-01 12:00:00
"""
ITEMS = "sku,dept,cat,label,list_price\nA,food,fruit,acme,1.50\nB,food,veg,,\nC,home,,zen,9.99\n"
MAPPING = """\
[events]
path = "events.csv"
member_id = "customer"
item_id = "sku"
store_id = "shop"
quantity = "qty"
price = "amount"
time = "sold_at"
{events_extra}
[events.constants]
channel = "pos"
event_type = "purchase"

[items]
path = "items.csv"
item_id = "sku"
category = ["dept", "cat"]
brand = "label"
price = "list_price"

{extra}
"""


def run(tmp_path: Path, events: str = EVENTS, items: str = ITEMS, events_extra: str = "", extra: str = "",
        strict: bool = False, as_of: datetime = AS_OF) -> tuple[object, Path]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "events.csv").write_bytes(events.encode() if isinstance(events, str) else events)
    (src / "items.csv").write_text(items)
    (src / "mapping.toml").write_text(MAPPING.format(events_extra=events_extra, extra=extra))
    out = tmp_path / "out"
    result = import_data(Mapping.load(src / "mapping.toml"), src, out, TierLadder(), LifecycleRules(),
                         as_of=as_of, strict=strict)
    return result, out


def problems(result: object) -> str:
    return "\n".join(result.report.lines)  # type: ignore[attr-defined]


def test_minimal_export_imports_and_reads_back_like_train_reads_it(tmp_path: Path) -> None:
    result, out = run(tmp_path)
    data = RetailData.read(out)
    assert data.events.num_rows == 4 and result.report.problems == 0
    assert data.interactions().events.num_rows == 4
    ev = data.events.to_pylist()
    assert ev[0]["channel"] == "pos" and ev[0]["event_type"] == "purchase" and ev[0]["quantity"] == 2
    assert ev[0]["ts"] == int(datetime(2024, 1, 5, 10, tzinfo=UTC).timestamp())
    assert {s for s in data.stores["store_id"].to_pylist()} == {"s1", "s2"}
    assert data.inventory.num_rows == 0 and data.identity_links.num_rows == 0


def test_member_defaults_are_derived_never_invented(tmp_path: Path) -> None:
    _, out = run(tmp_path)
    members = {m["member_id"]: m for m in RetailData.read(out).members.to_pylist()}
    c1 = members["c1"]
    assert c1["signup_ts"] == int(datetime(2024, 1, 5, 10, tzinfo=UTC).timestamp())  # signup = first event
    assert c1["home_store"] == "s1"  # visited twice, s2 once
    assert c1["channel_habit"] == "pos"
    assert not any(c1[f"consent_{c}"] for c in ("app", "mini_program", "web", "pos", "store"))
    assert c1["points"] == 13  # 2 x 3.00 + 5.50 + 1.50 spent, one point per currency unit
    assert c1["tier"] == "basic" and c1["lifecycle_stage"] == "active"  # bought 10 days before as_of


def test_items_fill_category_brand_price_and_band(tmp_path: Path) -> None:
    _, out = run(tmp_path)
    items = {i["item_id"]: i for i in RetailData.read(out).items.to_pylist()}
    assert items["A"]["category"] == "food/fruit" and items["A"]["brand"] == "acme" and items["A"]["price"] == 1.5
    assert items["B"]["brand"] == "unknown" and items["B"]["price"] == 5.5  # median unit price paid
    assert items["C"]["category"] == "home" and items["C"]["price_band"] in ("budget", "mid", "upper", "premium")


def test_tier_from_points_column_or_spend_rule(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "members.csv").write_text("id,pts,email_ok\nc1,25000,yes\nc9,,no\n")
    extra = '[members]\npath = "members.csv"\nmember_id = "id"\npoints = "pts"\nconsent_app = "email_ok"\n'
    _, out = run(tmp_path, extra=extra + "[derive]\npoints_per_currency = 1000\n")
    members = {m["member_id"]: m for m in RetailData.read(out).members.to_pylist()}
    assert members["c1"]["tier"] == "platinum" and members["c1"]["consent_app"] is True
    assert members["c2"]["points"] == 5500 and members["c2"]["tier"] == "gold"  # 5.50 spent x 1000
    assert members["c9"]["consent_app"] is False and members["c9"]["points"] == 0  # no events, no spend


@pytest.mark.parametrize(("events", "line", "field", "reason"), [
    (EVENTS.replace("c2,B,s2,1,5.50", "c2,B,s2,1,"), 5, "price", "empty price"),
    (EVENTS.replace("c2,B,s2,1,5.50", "c2,B,s2,1,5,50"), 5, "row", "wrong number of fields"),
    (EVENTS.replace("5.50,2024-01-06", "5.5O,2024-01-06"), 3, "price", "not a number"),
    (EVENTS.replace("c1,B,s2,1", "c1,B,s2,one"), 3, "quantity", "not a whole number"),
    (EVENTS.replace("2024-02-01 12:00:00", "01/02/2024"), 5, "ts", "not an ISO 8601 time"),
    (EVENTS.replace("2024-02-01 12:00:00", "2024-02-30 12:00:00"), 5, "ts", "not a valid date"),
    (EVENTS.replace("2024-02-01", "2031-02-01"), 5, "ts", "in the future"),
    (EVENTS.replace("2024-02-01", "1900-02-01"), 5, "ts", "before 1990-01-01: implausibly old"),
    (EVENTS.replace("c2,B", ",B"), 5, "member_id", "neither member_id nor anonymous_id"),
    (EVENTS.replace("c2,B,s2", "c2,,s2"), 5, "item_id", "required"),
    (EVENTS.replace("c2,B,s2", "c2,B,"), 5, "store_id", "required for pos"),
    (EVENTS.replace("c2,B,s2,1,5.50", "c2,B,s2,1,-5.50"), 5, "price", "negative price"),
])
def test_each_bad_row_is_named_and_only_it_is_rejected(tmp_path: Path, events: str, line: int, field: str,
                                                       reason: str) -> None:
    result, out = run(tmp_path, events=events)
    assert f"events.csv:{line}: field '{field}': {reason}" in problems(result)
    assert RetailData.read(out).events.num_rows == 3
    stats = result.report.tables["events"]
    assert stats.rows_read == 4 and stats.rows_rejected == 1 and stats.rows_written == 3


def test_non_utf8_bytes_name_file_and_line(tmp_path: Path) -> None:
    raw = EVENTS.encode().replace(b"c2,B", b"c\xe92,B")
    result, _ = run(tmp_path, events=raw)
    assert "events.csv:5: field 'member_id': not valid UTF-8" in problems(result)


def test_milliseconds_in_a_seconds_column_are_named(tmp_path: Path) -> None:
    events = "customer,sku,shop,qty,amount,sold_at\nc1,A,s1,1,1.5,1704448800\nc1,A,s1,1,1.5,1704448800000\n"
    result, out = run(tmp_path, events=events, events_extra='time_format = "s"')
    assert "events.csv:3: field 'ts': looks like milliseconds, not seconds" in problems(result)
    result, out = run(tmp_path, events=events.replace(",1704448800\n", ",1704448801000\n"),
                      events_extra='time_format = "ms"')
    assert result.report.problems == 0
    assert RetailData.read(out).events["ts"].to_pylist() == [1704448801, 1704448800]
    result, _ = run(tmp_path, events=events, events_extra='time_format = "ms"')
    assert "events.csv:2: field 'ts': looks like seconds, not milliseconds" in problems(result)


def test_date_plus_time_columns_with_a_pattern_and_a_zone(tmp_path: Path) -> None:
    events = "customer,sku,shop,qty,amount,day,clock\nc1,A,s1,1,1.5,05/01/2024,10:00\n"
    extra = 'date = "day"\ntime_format = "%d/%m/%Y %H:%M"\ntimezone = "Europe/Paris"'
    text = MAPPING.format(events_extra=extra, extra="").replace('time = "sold_at"', 'time = "clock"')
    src = tmp_path / "src"
    src.mkdir()
    (src / "events.csv").write_text(events)
    (src / "items.csv").write_text(ITEMS)
    (src / "m.toml").write_text(text)
    import_data(Mapping.load(src / "m.toml"), src, tmp_path / "out", TierLadder(), LifecycleRules(), as_of=AS_OF)
    assert RetailData.read(tmp_path / "out").events["ts"].to_pylist() == [
        int(datetime(2024, 1, 5, 9, tzinfo=UTC).timestamp())]


def test_line_totals_in_cents_and_negative_quantities_as_returns(tmp_path: Path) -> None:
    events = "customer,sku,shop,qty,amount,sold_at\nc1,A,s1,4,600,2024-01-05\nc1,A,s1,-1,-150,2024-01-06\n"
    result, out = run(tmp_path, events=events, events_extra='price_is = "line_total"\ncurrency_unit = 0.01')
    rows = RetailData.read(out).events.to_pylist()
    assert [(r["event_type"], r["quantity"], r["price"]) for r in rows] == [
        ("purchase", 4, 1.5), ("return", 1, 1.5)]


def test_duplicates_dropped_and_counted_or_kept(tmp_path: Path) -> None:
    events = EVENTS + "c2,B,s2,1,5.50,2024-02-01 12:00:00\n"
    result, out = run(tmp_path, events=events)
    assert result.report.tables["events"].duplicates == 1 and RetailData.read(out).events.num_rows == 4
    result, out = run(tmp_path, events=events, extra='[checks]\nduplicates = "keep"')
    assert result.report.tables["events"].duplicates == 1 and RetailData.read(out).events.num_rows == 5


def test_unknown_items_added_or_rejected(tmp_path: Path) -> None:
    events = EVENTS + "c2,Z,s2,1,2.00,2024-02-02 12:00:00\n"
    result, out = run(tmp_path, events=events)
    items = {i["item_id"]: i for i in RetailData.read(out).items.to_pylist()}
    assert items["Z"]["category"] == "unknown" and items["Z"]["price"] == 2.0
    assert "1 items named only by events" in result.report.render()
    result, out = run(tmp_path, events=events, extra='[checks]\nunknown_items = "reject"')
    assert "events.csv:6: field 'item_id': not in the item file" in problems(result)
    assert "Z" not in RetailData.read(out).items["item_id"].to_pylist()


def test_report_lists_up_to_the_limit_then_counts(tmp_path: Path) -> None:
    bad = "".join(f"c{i},A,s1,1,,2024-01-05\n" for i in range(30))
    result, _ = run(tmp_path, events=EVENTS + bad, extra="[checks]\nmax_errors = 5")
    text = result.report.render()
    assert len(result.report.lines) == 5 and "... and 25 more problems" in text
    assert "rejected 30: price: empty price on a purchase or return" in text


def test_strict_writes_nothing_and_nothing_usable_fails(tmp_path: Path) -> None:
    with pytest.raises(ImportFailed, match="strict"):
        run(tmp_path, events=EVENTS.replace("5.50,2024-01-06", ",2024-01-06"), strict=True)
    assert not (tmp_path / "out" / "events.parquet").exists()
    with pytest.raises(ImportFailed, match="no event passed"):
        run(tmp_path, events="customer,sku,shop,qty,amount,sold_at\nc1,A,s1,1,,2024-01-05\n")


def test_mapping_mistakes_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"mapping events.time: column 'sold_at' is not in .*events.csv "
                                              r"\(columns: customer, sku, shop, qty, amount, sold_on\)"):
        run(tmp_path, events=EVENTS.replace("sold_at", "sold_on"))
    (tmp_path / "m.toml").write_text('[events]\npath = "e.csv"\nmember_id = "a"\n[items]\npath="i.csv"\nitem_id="x"')
    with pytest.raises(InvalidArgument, match="mapping events"):
        Mapping.load(tmp_path / "m.toml")
    (tmp_path / "m.toml").write_text(MAPPING.format(events_extra='colour = "red"', extra=""))
    with pytest.raises(InvalidArgument, match="colour"):
        Mapping.load(tmp_path / "m.toml")


def test_stale_history_is_called_out(tmp_path: Path) -> None:
    result, out = run(tmp_path, as_of=datetime(2025, 6, 1, tzinfo=UTC))
    assert any("--as-of 2024-02-20" in w for w in result.report.warnings)
    assert set(RetailData.read(out).members["lifecycle_stage"].to_pylist()) == {"churned"}


def test_parquet_input_with_numeric_ids(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"customer": [1, 2], "sku": [10, 11], "shop": [5, 5], "qty": [1, 1],
                             "amount": [1.0, 2.0], "sold_at": pa.array([1704448800, 1704448900], pa.int64())}),
                   src / "events.parquet")
    pq.write_table(pa.table({"sku": [10, 11], "dept": ["a", "b"], "cat": ["x", None], "label": ["l", "m"],
                             "list_price": [1.0, None]}), src / "items.parquet")
    (src / "m.toml").write_text(MAPPING.format(events_extra="", extra="").replace(".csv", ".parquet"))
    import_data(Mapping.load(src / "m.toml"), src, tmp_path / "out", TierLadder(), LifecycleRules(), as_of=AS_OF)
    data = RetailData.read(tmp_path / "out")
    assert data.events["member_id"].to_pylist() == ["1", "2"] and data.items["item_id"].to_pylist() == ["10", "11"]


def test_duplicate_detection_is_exact_across_nulls_and_types() -> None:
    from omnirec.importer.run import _duplicates

    table = pa.table({"a": ["x", "x", None, None, "x", "y"], "b": [1, 1, 2, 2, 1, 1],
                      "c": [0.5, 0.5, None, None, 0.25, 0.5]})
    assert _duplicates(table).tolist() == [False, True, False, True, False, False]
    among = np.array([False, True, True, True, True, True])
    assert _duplicates(table, among=among).tolist() == [False, False, False, True, False, False]


PROMOTIONS_BY_WEEK = """\
sku,shop,wk,display_loc,mailer_loc
A,s1,1,3,0
B,s2,2,0,A
A,s1,0,3,0
Z,s1,1,3,0
C,s1,x,3,0
B,,2,0,A
C,s2,2,No,0
B,s2,2,0,A
"""
WEEKS = ('[promotions]\npath = "promotions.csv"\nitem_id = "sku"\nstore_id = "shop"\nweek = "wk"\n'
         'week_one = "2024-01-01T05:00:00Z"\ndisplay = "display_loc"\nmailer = "mailer_loc"\n')


def run_promotions(tmp_path: Path, promotions: str, section: str) -> tuple[object, Path]:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "promotions.csv").write_text(promotions)
    return run(tmp_path, extra=section)


def test_promotions_by_week_are_imported_and_bad_rows_named(tmp_path: Path) -> None:
    from omnirec.domain.readers import read_promotions

    result, out = run_promotions(tmp_path, PROMOTIONS_BY_WEEK, WEEKS)
    text = problems(result)
    assert "promotions.csv:4: field 'week': must be >= 1" in text
    assert "promotions.csv:5: field 'item_id': not in the item file" in text
    assert "promotions.csv:6: field 'week': not a whole number" in text
    assert "promotions.csv:7: field 'store_id': required value is empty" in text
    stats = result.report.tables["promotions"]  # type: ignore[attr-defined]
    assert (stats.rows_read, stats.rows_written, stats.duplicates) == (8, 3, 1)
    data = RetailData.read(out, promotions=True)
    assert data.promotions is not None and RetailData.read(out).promotions is None
    week_one = int(datetime(2024, 1, 1, 5, tzinfo=UTC).timestamp())
    rows = data.promotions.to_pylist()
    assert rows == [
        {"item_id": "A", "store_id": "s1", "start_ts": week_one, "end_ts": week_one + 7 * 86_400, "display": True,
         "mailer": False},
        {"item_id": "B", "store_id": "s2", "start_ts": week_one + 7 * 86_400, "end_ts": week_one + 14 * 86_400,
         "display": False, "mailer": True},
        {"item_id": "C", "store_id": "s2", "start_ts": week_one + 7 * 86_400, "end_ts": week_one + 14 * 86_400,
         "display": False, "mailer": False}]
    assert read_promotions(out / "promotions.parquet").num_rows == 3


def test_promotions_by_time_range(tmp_path: Path) -> None:
    promotions = ("sku,shop,from,to,shelf\nA,s1,2024-02-01,2024-02-08,end cap\nB,s1,2024-02-08,2024-02-01,yes\n"
                  "C,s2,2024-02-01,2024-02-02,\n")
    section = ('[promotions]\npath = "promotions.csv"\nitem_id = "sku"\nstore_id = "shop"\nstart = "from"\n'
               'end = "to"\ndisplay = "shelf"\n')
    result, out = run_promotions(tmp_path, promotions, section)
    assert "promotions.csv:3: field 'end_ts': not after start (got '2024-02-01T00:00:00Z')" in problems(result)
    rows = RetailData.read(out, promotions=True).promotions.to_pylist()  # type: ignore[union-attr]
    assert [(r["item_id"], r["display"], r["mailer"]) for r in rows] == [("A", True, False), ("C", False, False)]
    assert rows[0]["end_ts"] - rows[0]["start_ts"] == 7 * 86_400
    result, out = run(tmp_path)
    assert not (out / "promotions.parquet").exists()  # a later import without the table leaves none behind


def test_promotions_parsed_per_distinct_value_match_a_row_by_row_parse(tmp_path: Path) -> None:
    """The import parses each promotion column once per distinct value (`importer.source.Distinct`) and reads
    only the mapped columns: the same 6,000 rows, as Parquet and as CSV, give the rows and rejections a plain
    row-by-row reading of them gives (duplicates dropped, bad rows named)."""
    rng = np.random.default_rng(3)
    n = 6_000
    sku = rng.choice(["A", "B", "C", "Z", "A\x01", ""], n, p=[0.3, 0.3, 0.3, 0.04, 0.03, 0.03])
    shop = rng.choice(["s1", "s2", " s3 ", ""], n, p=[0.4, 0.4, 0.1, 0.1])
    week = rng.choice([1.0, 2.0, 3.0, 0.0, 1.5, np.nan], n, p=[0.3, 0.3, 0.3, 0.03, 0.04, 0.03])
    display = rng.choice(["0", "3", "A", "no", ""], n)
    mailer = rng.choice(["0", "A", "B"], n)
    week_one = int(datetime(2024, 1, 1, 5, tzinfo=UTC).timestamp())
    expected, seen, rejected = [], set(), 0
    for row in zip(sku, shop, week, display, mailer, strict=True):
        s, st, w, d, m = row
        key = (s, st, None if np.isnan(w) else w, d, m)
        if key in seen:
            continue  # an exact duplicate of an earlier row: dropped, not rejected
        seen.add(key)
        store = st.strip()
        if s not in ("A", "B", "C") or not store or np.isnan(w) or w < 1 or w != int(w):
            rejected += 1
            continue
        start = week_one + (int(w) - 1) * 7 * 86_400
        expected.append({"item_id": s, "store_id": store, "start_ts": start, "end_ts": start + 7 * 86_400,
                         "display": d.lower() not in ("0", "no", ""), "mailer": m != "0"})
    table = pa.table({"sku": sku, "shop": shop, "wk": week, "display_loc": display, "mailer_loc": mailer,
                      "unmapped": pa.array([{"x": 1}] * n)})
    results = {}
    for fmt in ("parquet", "csv"):
        root = tmp_path / fmt
        (root / "src").mkdir(parents=True)
        if fmt == "parquet":
            pq.write_table(table, root / "src" / "promotions.parquet")
        else:
            text = table.drop_columns(["unmapped"]).to_pandas()
            text["wk"] = [("" if np.isnan(w) else (str(int(w)) if w == int(w) else str(w))) for w in week]
            text.to_csv(root / "src" / "promotions.csv", index=False)
        result, out = run(root, extra=WEEKS.replace("promotions.csv", f"promotions.{fmt}"))
        rows = RetailData.read(out, promotions=True).promotions.to_pylist()  # type: ignore[union-attr]
        stats = result.report.tables["promotions"]  # type: ignore[attr-defined]
        results[fmt] = (rows, stats.rows_read, stats.rows_written, stats.duplicates, stats.rows_rejected)
    assert results["parquet"] == results["csv"]
    rows, read, written, duplicates, rows_rejected = results["parquet"]
    assert sorted(rows, key=str) == sorted(expected, key=str)
    assert (read, written, duplicates, rows_rejected) == (n, len(expected), n - len(seen), rejected)


def test_promotions_mapping_mistakes_name_the_key(tmp_path: Path) -> None:
    for section, message in ((WEEKS.replace('week_one = "2024-01-01T05:00:00Z"\n', ""), "week_one"),
                             (WEEKS.replace('week = "wk"\n', ""), "map either week"),
                             (WEEKS.replace('display = "display_loc"\nmailer = "mailer_loc"\n', ""), "display"),
                             (WEEKS + 'start = "from"\nend = "to"\n', "map either week")):
        (tmp_path / "m.toml").write_text(MAPPING.format(events_extra="", extra=section))
        with pytest.raises(InvalidArgument, match=f"mapping promotions.*{message}"):
            Mapping.load(tmp_path / "m.toml")


def test_promotions_file_is_validated_on_read(tmp_path: Path) -> None:
    from omnirec.domain.errors import DataError
    from omnirec.domain.readers import read_promotions

    good = {"item_id": ["A", "B"], "store_id": ["s1", "s1"], "start_ts": [0, 10], "end_ts": [5, 20],
            "display": [True, False], "mailer": [False, True]}
    for change, field, row in (({"end_ts": [5, 10]}, "end_ts", 2), ({"store_id": ["s1", None]}, "store_id", 2),
                               ({"item_id": ["A\x01", "B"]}, "item_id", 1), ({"start_ts": [-1, 10]}, "start_ts", 1)):
        pq.write_table(pa.table({**good, **change}), tmp_path / "p.parquet")
        with pytest.raises(DataError, match=rf"p.parquet:{row}: field '{field}'"):
            read_promotions(tmp_path / "p.parquet")
    pq.write_table(pa.table({k: v for k, v in good.items() if k != "mailer"}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match="field 'mailer': column missing"):
        read_promotions(tmp_path / "p.parquet")
    assert read_promotions(tmp_path / "none.parquet") is None
