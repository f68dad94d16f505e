"""Parquet datasets: the same tables as CSV (a file or a directory of Spark part files),
the same validation with file, row and column, and `serving export --format parquet`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings

from embeddings.als import build_interactions
from serving.export import export_from_redis
from serving.load import load_into_redis
from stores.redis import connect
from tests.builders import social_dataset
from tests.conftest import REPO
from tests.test_dataset import ACCEPTED, assert_same, datasets
from training.dataset import Dataset, DatasetError, Edges, load_dataset, write_dataset
from training.generate import generate

TABLES = ("items", "likes", "follows", "friends", "sellers", "engagements")


@pytest.fixture(scope="module")
def generated() -> Dataset:
    ds = generate(users=60, sellers=8, items=150, seed=4)
    assert len(ds.engagements) and len(ds.sellers)  # every table is exercised
    return ds


def assert_equal(a: Dataset, b: Dataset) -> None:
    """Every field of every table, arrays bit for bit (NaN equal to NaN)."""
    for part in ("items", "likes", "follows", "friends", "sellers", "engagements"):
        x, y = getattr(a, part), getattr(b, part)
        for field in vars(x):
            u, v = getattr(x, field), getattr(y, field)
            if isinstance(u, np.ndarray) or isinstance(v, np.ndarray):
                assert u is not None and v is not None, (part, field)
                assert np.asarray(u).dtype == np.asarray(v).dtype, (part, field)
                np.testing.assert_array_equal(u, v, err_msg=f"{part}.{field}")
            else:
                assert u == v, (part, field)
    assert a.fingerprint() == b.fingerprint()


def write_parquet(directory: Path, name: str, columns: dict[str, pa.Array | list]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def error_of(path: Path) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_dataset(str(path))
    return info.value


# --------------------------------------------------------------------------- same dataset


def test_csv_and_parquet_of_a_generated_dataset_load_equal(tmp_path: Path, generated: Dataset) -> None:
    write_dataset(generated, str(tmp_path / "csv"))
    write_dataset(generated, str(tmp_path / "pq"), format="parquet")
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == sorted(f"{t}.parquet" for t in TABLES)
    from_csv, from_parquet = load_dataset(str(tmp_path / "csv")), load_dataset(str(tmp_path / "pq"))
    assert_equal(from_csv, from_parquet)
    assert from_parquet.fingerprint() == generated.fingerprint()


def test_weighted_likes_keep_their_weight(tmp_path: Path, generated: Dataset) -> None:
    likes = generated.likes
    weighted = generated.with_likes(Edges(likes.src, likes.dst, likes.ts, np.arange(1.0, len(likes) + 1) / 4))
    write_dataset(weighted, str(tmp_path / "csv"))
    write_dataset(weighted, str(tmp_path / "pq"), format="parquet")
    assert pq.read_schema(tmp_path / "pq" / "likes.parquet").names == ["user_id", "item_id", "ts", "weight"]
    assert_equal(load_dataset(str(tmp_path / "csv")), load_dataset(str(tmp_path / "pq")))


def test_parquet_and_csv_datasets_give_the_same_interactions(tmp_path: Path, generated: Dataset) -> None:
    write_dataset(generated, str(tmp_path / "csv"))
    write_dataset(generated, str(tmp_path / "pq"), format="parquet")
    a = build_interactions(load_dataset(str(tmp_path / "csv")))
    b = build_interactions(load_dataset(str(tmp_path / "pq")))
    assert (a.user_ids, a.item_ids, a.seller_ids) == (b.user_ids, b.item_ids, b.seller_ids)
    assert a.matrix.dtype == b.matrix.dtype and a.matrix.shape == b.matrix.shape
    assert a.matrix.nnz == b.matrix.nnz > 0
    assert (a.matrix != b.matrix).nnz == 0


def test_written_parquet_has_plain_types_spark_reads(tmp_path: Path, generated: Dataset) -> None:
    write_dataset(generated, str(tmp_path), format="parquet")
    plain = {pa.string(), pa.float64(), pa.int64(), pa.bool_()}
    for table in TABLES:
        schema = pq.read_schema(tmp_path / f"{table}.parquet")
        assert {field.type for field in schema} <= plain, (table, schema)
    items = pq.read_schema(tmp_path / "items.parquet")
    assert (items.field("stock").type, items.field("ship_days").type, items.field("feed_eligible").type) == (
        pa.int64(), pa.int64(), pa.bool_())  # fmt: skip
    # Unknown times are nulls, not NaN.
    follows = generated.follows
    untimed = dataclasses.replace(generated, follows=Edges(follows.src, follows.dst, np.full(len(follows), np.nan)))
    write_dataset(untimed, str(tmp_path), format="parquet")
    assert pq.read_table(tmp_path / "follows.parquet").column("ts").null_count == len(follows) > 0


def test_writing_one_format_replaces_the_other(tmp_path: Path, generated: Dataset) -> None:
    write_dataset(generated, str(tmp_path))
    (tmp_path / "notes.txt").write_text("kept")
    write_dataset(generated, str(tmp_path), format="parquet")
    assert not list(tmp_path.glob("*.csv"))
    assert_equal(load_dataset(str(tmp_path)), generated)
    write_dataset(generated, str(tmp_path))
    assert not list(tmp_path.glob("*.parquet"))
    assert (tmp_path / "notes.txt").read_text() == "kept"
    with pytest.raises(ValueError, match="format"):
        write_dataset(generated, str(tmp_path), format="json")  # type: ignore[arg-type]


# tmp_path is shared by the examples; each one overwrites every file.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ds=datasets())
def test_round_trip_property(tmp_path: Path, ds: Dataset) -> None:
    write_dataset(ds, str(tmp_path), format="parquet")
    loaded = load_dataset(str(tmp_path))
    assert_same(ds, loaded)
    assert loaded.fingerprint() == ds.fingerprint()


# --------------------------------------------------------------------------- part files


def write_parts(directory: Path, table: pa.Table, sizes: list[int]) -> list[str]:
    """``table`` as Spark writes it: part files, _SUCCESS and .crc files beside them."""
    directory.mkdir(parents=True)
    names, start = [], 0
    for n, size in enumerate(sizes):
        name = f"part-{n:05d}-5e0c1d2a-c000.snappy.parquet"
        pq.write_table(table.slice(start, size), directory / name)
        (directory / f".{name}.crc").write_bytes(b"\0crc")
        names.append(name)
        start += size
    (directory / "_SUCCESS").write_text("")
    return names


def test_a_directory_of_part_files_loads(tmp_path: Path, generated: Dataset) -> None:
    write_dataset(generated, str(tmp_path / "one"), format="parquet")
    parts = tmp_path / "parts"
    for table in TABLES:
        whole = pq.read_table(tmp_path / "one" / f"{table}.parquet")
        third = whole.num_rows // 3
        write_parts(parts / f"{table}.parquet", whole, [third, 0, whole.num_rows - third])
    loaded = load_dataset(str(parts))
    assert_equal(loaded, generated)
    from ranking.vocab import EncodedIds, encode

    # The parts' id columns are joined with their encodings, and those are the whole column's.
    assert isinstance(loaded.likes.src, EncodedIds)
    for ids in (loaded.likes.src, loaded.likes.dst, loaded.items.seller_id):
        assert encode(ids)[0].tolist() == encode(list(ids))[0].tolist() and encode(ids)[1] == encode(list(ids))[1]


def test_parts_may_differ_in_types_and_optional_columns(tmp_path: Path) -> None:
    likes = tmp_path / "likes.parquet"
    likes.mkdir()
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": ["i1"], "ts": [1700000000.0]}), likes / "part-00000.parquet")
    pq.write_table(pa.table({"user_id": ["u2"], "item_id": ["i1"], "ts": ["2023-11-14T22:13:21"], "weight": [3.0]}),
                   likes / "part-00001.parquet")  # fmt: skip
    ds = load_dataset(str(tmp_path))
    assert ds.likes.src == ["u1", "u2"]
    assert ds.likes.ts.tolist() == [1700000000.0, 1700000001.0]
    assert ds.likes.weight.tolist() == [1.0, 3.0]


def test_an_empty_part_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "likes.parquet").mkdir()
    (tmp_path / "likes.parquet" / "_SUCCESS").write_text("")
    assert str(error_of(tmp_path)) == "likes.parquet: a directory without part files (*.parquet)"


# --------------------------------------------------------------------------- types


def test_types_beyond_strings_and_doubles(tmp_path: Path) -> None:
    """Integer ids, timestamps and dates, ISO strings, dictionary strings, int32 stock,
    bool eligibility: each loads as its CSV spelling does."""
    stamp = datetime(2025, 1, 2, 3, 4, 5, 250000, tzinfo=timezone.utc)
    csv = tmp_path / "csv"
    csv.mkdir()
    (csv / "items.csv").write_text(
        "item_id,seller_id,created_at,stock,price,feed_eligible,ship_days\n"
        f"1,s1,{stamp.timestamp()},3,9.5,1,2\n"
        "2,s1,1735776000,0,,0,\n"
    )
    (csv / "likes.csv").write_text(f"user_id,item_id,ts\nu1,1,{stamp.timestamp()}\nu1,2,\nu2,1,1735776000\n")
    (csv / "sellers.csv").write_text("seller_id,vacation_until\ns1,inf\n")
    pqd = tmp_path / "pq"
    write_parquet(pqd, "items", {
        "item_id": pa.array([1, 2], pa.int32()),
        "seller_id": pa.array(["s1", "s1"]).dictionary_encode(),
        "created_at": pa.array([stamp.replace(tzinfo=None), datetime(2025, 1, 2)], pa.timestamp("us")),
        "stock": pa.array([3, 0], pa.int32()),
        "price": pa.array([9.5, None], pa.float32()),
        "feed_eligible": pa.array([True, False]),
        "ship_days": pa.array([2, None], pa.int16()),
    })  # fmt: skip
    write_parquet(pqd, "likes", {
        "user_id": pa.array(["u1", "u1", "u2"], pa.large_string()),
        "item_id": pa.array([1, 2, 1], pa.int64()),
        "ts": pa.array([stamp, None, datetime(2025, 1, 2, tzinfo=timezone.utc)], pa.timestamp("ms", tz="Europe/Paris")),
    })  # fmt: skip
    write_parquet(pqd, "sellers", {"seller_id": ["s1"], "vacation_until": [float("inf")]})
    assert_equal(load_dataset(str(csv)), load_dataset(str(pqd)))
    # Dates and ISO strings are times too; an all-null column is empty.
    write_parquet(pqd, "likes", {"user_id": ["u1", "u2"], "item_id": ["1", "1"],
                                 "ts": pa.array([datetime(2025, 1, 2).date()] * 2, pa.date32())})  # fmt: skip
    assert load_dataset(str(pqd)).likes.ts.tolist() == [1735776000.0] * 2
    write_parquet(pqd, "likes", {"user_id": ["u1"], "item_id": ["1"], "ts": ["2025-01-02T00:00:00+00:00"]})
    assert load_dataset(str(pqd)).likes.ts.tolist() == [1735776000.0]
    write_parquet(pqd, "likes", {"user_id": ["u1"], "item_id": ["1"], "ts": pa.nulls(1)})
    assert np.isnan(load_dataset(str(pqd)).likes.ts).all()


def test_extra_columns_are_ignored_with_a_warning(tmp_path: Path) -> None:
    write_parquet(tmp_path, "likes", {"user_id": ["u1"], "item_id": ["i1"], "ts": [1.0], "score": [0.5]})
    warnings: list[str] = []
    load_dataset(str(tmp_path), warnings=warnings)
    assert warnings == ["likes.parquet: ignored column 'score' (not one of user_id, item_id, ts, weight)"]


def test_spaces_around_column_names_are_dropped_as_in_csv(tmp_path: Path) -> None:
    """A CSV header's names are stripped; the same names in Parquet (a CSV converted as it
    was) were 'missing required column' for columns the file has."""
    csv, parquet = tmp_path / "csv", tmp_path / "parquet"
    csv.mkdir()
    (csv / "likes.csv").write_text(" user_id ,item_id , ts,weight\nu1,i1,1,2\n")
    write_parquet(parquet, "likes", {" user_id ": ["u1"], "item_id ": ["i1"], " ts": [1.0], "weight": [2.0]})
    assert_equal(load_dataset(str(parquet)), load_dataset(str(csv)))
    write_parquet(parquet, "likes", {"user_id": ["u1"], "item_id": ["i1"], "ts": [1.0], " ts": [2.0]})
    assert str(error_of(parquet)) == "likes.parquet: duplicate column 'ts'"


# --------------------------------------------------------------------------- errors

GOOD_LIKES = {"user_id": ["u1", "u2", "u3"], "item_id": ["i1", "i1", "i2"], "ts": [1.0, 2.0, 3.0]}
GOOD_ITEMS = {"item_id": ["i1", "i2"], "seller_id": ["s1", "s1"], "created_at": [0.0, 0.0], "stock": [1, 1]}


@pytest.mark.parametrize(("values", "message"), [
    (pa.array([datetime(2026, 1, 1), datetime(9999, 12, 31)], pa.timestamp("us")),
     f"253402214400 (9999-12-31T00:00:00Z) is after the accepted times, {ACCEPTED}; a vacation with no end is 'inf' (until further notice)"),
    (pa.array([float("inf"), -3e9]), f"-3000000000 (1874-12-07T18:40:00Z) is before the accepted times, {ACCEPTED}"),
])  # fmt: skip
def test_a_vacation_end_out_of_range_names_file_row_and_column(tmp_path: Path, values, message: str) -> None:
    write_parquet(tmp_path, "likes", GOOD_LIKES)
    write_parquet(tmp_path, "sellers", {"seller_id": ["s1", "s2"], "vacation_until": values})
    first = error_of(tmp_path).errors[0]
    assert (first.file, first.line, first.column, first.message) == ("sellers.parquet", 2, "vacation_until", message)


@pytest.mark.parametrize(
    ("table", "column", "values", "line", "message"),
    [
        ("likes", "ts", ["1", "yesterday", "3"], 2,
         "expected a Unix time or ISO-8601 timestamp, got 'yesterday'"),
        ("likes", "ts", [1.0, 2.0, float("inf")], 3, "expected a Unix time or ISO-8601 timestamp, got inf"),
        ("likes", "ts", [1.0, 1.7e12, 3.0], 2, f"1700000000000 is after the accepted times, {ACCEPTED}: milliseconds? (divide by 1,000)"),
        # A timestamp or date Unix seconds cannot hold as a float exactly (a 9999-12-31 "forever").
        ("likes", "ts", pa.array([datetime(2020, 1, 1), datetime(9999, 12, 31), None], pa.timestamp("us")), 2,
         f"253402214400 (9999-12-31T00:00:00Z) is after the accepted times, {ACCEPTED}"),
        ("likes", "ts", pa.array([datetime(1, 1, 1, tzinfo=timezone.utc), None, None], pa.timestamp("us", "UTC")), 1,
         f"-62135596800 (0001-01-01T00:00:00Z) is before the accepted times, {ACCEPTED}"),
        ("likes", "ts", pa.array([date(1899, 12, 31), date(2020, 1, 1), None], pa.date32()), 1,
         f"-2209075200 (1899-12-31T00:00:00Z) is before the accepted times, {ACCEPTED}"),
        # Integers past 2**53 (nanoseconds as int64, as pandas writes a datetime column's
        # integers) were a pyarrow traceback: "Integer value ... not in range".
        ("likes", "ts", pa.array([1, 1_700_000_000_123_456_789, 3], pa.int64()), 2,
         f"1.7e+18 is after the accepted times, {ACCEPTED}"),
        ("items", "stock", pa.array([1, 2**64 - 1], pa.uint64()), 2,
         "expected a non-negative integer, got 1.8446744073709552e+19"),
        ("likes", "user_id", ["u1", None, "u3"], 2, "must not be empty"),
        ("likes", "user_id", ["u1", "  ", "u3"], 2, "must not be empty"),
        ("likes", "item_id", ["i1", "i1", "i9"], 3, "unknown item 'i9' (not in items.parquet)"),
        ("likes", "weight", [1.0, 0.0, None], 2, "expected a positive number or empty, got 0.0"),
        ("items", "stock", [1, -2], 2, "expected a non-negative integer, got -2"),
        ("items", "stock", [1.0, 1.5], 2, "expected a non-negative integer, got 1.5"),
        ("items", "stock", pa.array([1, None], pa.int64()), 2, "expected a non-negative integer, got null"),
        ("items", "price", [1.0, -1.0], 2, "expected a non-negative number or empty, got -1.0"),
        ("items", "ship_days", [1, 400], 2, "expected whole days between 0 and 365 or empty, got 400.0"),
        ("items", "feed_eligible", [1, 2], 2, "expected 1, 0 or empty, got 2.0"),
        ("items", "currency", ["EUR", "euro"], 2, "expected an ISO 4217 code such as EUR or empty, got 'euro'"),
        ("items", "item_id", ["i1", "i1"], 2, "duplicate item 'i1' (first on row 1) differing in seller_id"),
    ],
)  # fmt: skip
def test_bad_values_name_file_row_and_column(tmp_path: Path, table: str, column: str, values, line: int, message: str) -> None:
    tables = {"likes": dict(GOOD_LIKES), "items": dict(GOOD_ITEMS)}
    tables[table][column] = values
    if column == "item_id":  # rows the same in every column are one item; these differ
        tables["items"]["seller_id"] = ["s1", "s2"]
    for name, columns in tables.items():
        write_parquet(tmp_path, name, columns)
    first = error_of(tmp_path).errors[0]
    assert (first.file, first.line, first.column, first.message) == (f"{table}.parquet", line, column, message)
    assert str(first) == f"{table}.parquet:{line}: column {column!r}: {message}"


def test_a_bad_value_in_a_part_file_names_the_part_and_its_row(tmp_path: Path) -> None:
    table = pa.table({"user_id": ["u1", "u2", "u3", "u4"], "item_id": ["i1", "i1", "i2", "i2"],
                      "ts": ["1", "2", "3", "soon"]})  # fmt: skip
    names = write_parts(tmp_path / "likes.parquet", table, [2, 2])
    write_parquet(tmp_path, "items", {**GOOD_ITEMS, "item_id": ["i1", "i2"]})
    err = error_of(tmp_path)
    assert str(err) == f"likes.parquet/{names[1]}:2: column 'ts': expected a Unix time or ISO-8601 timestamp, got 'soon'"
    # A duplicate across parts says where the first one is.
    items = pa.table({"item_id": ["i1", "i2", "i3", "i2"], "seller_id": ["s", "s", "s", "t"], "created_at": [0.0] * 4, "stock": [1] * 4})
    (tmp_path / "items.parquet").unlink()
    parts = write_parts(tmp_path / "items.parquet", items, [2, 2])
    err = error_of(tmp_path)
    assert f"items.parquet/{parts[1]}:2: column 'item_id': duplicate item 'i2' (first on row 2 of items.parquet/{parts[0]}) differing in seller_id" in str(err)


def test_errors_are_collected_across_rows_and_files(tmp_path: Path) -> None:
    write_parquet(tmp_path, "likes", {**GOOD_LIKES, "ts": ["x", "2", "y"]})
    write_parquet(tmp_path, "items", {**GOOD_ITEMS, "stock": [-1, 1]})
    err = error_of(tmp_path)
    assert [(e.file, e.line, e.column) for e in err.errors] == [
        ("likes.parquet", 1, "ts"), ("likes.parquet", 3, "ts"), ("items.parquet", 1, "stock")]  # fmt: skip


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"user_id": ["u1"], "item_id": ["i1"]},
         "likes.parquet: missing required column 'ts' (columns: user_id, item_id, ts[, weight])"),
        ({"\ufeffuser_id": ["u1"], "item_id": ["i1"], "ts": [1.0]},
         "likes.parquet: missing required column 'user_id' (columns: user_id, item_id, ts[, weight]); "
         "the header has '\\ufeffuser_id': a stray byte order mark (U+FEFF) in the name, remove it"),
        ({"user_id": ["u1"], "item_id": ["i1"], "ts": [True]},
         "likes.parquet: column 'ts': expected numbers (Unix seconds), ISO-8601 strings or timestamps, got Parquet type bool"),
        ({"user_id": [1.5], "item_id": ["i1"], "ts": [1.0]},
         "likes.parquet: column 'user_id': expected strings or integers, got Parquet type double"),
        ({"user_id": ["u1"], "item_id": ["i1"], "ts": [1.0], "weight": [[1.0]]},
         "likes.parquet: column 'weight': expected numbers or strings, got Parquet type list<element: double>"),
    ],
)  # fmt: skip
def test_bad_columns_are_named(tmp_path: Path, columns: dict, message: str) -> None:
    write_parquet(tmp_path, "likes", columns)
    assert str(error_of(tmp_path)) == message


def test_a_file_that_is_not_parquet_is_an_error(tmp_path: Path) -> None:
    write_parquet(tmp_path, "likes", GOOD_LIKES)
    (tmp_path / "friends.parquet").write_bytes(b"user_id,friend_id,ts\nu1,u2,\n")
    err = error_of(tmp_path)
    assert (err.file, err.line, err.column) == ("friends.parquet", 0, "<file>")
    assert str(err).startswith("friends.parquet: not a readable Parquet file: ")


def test_both_formats_for_one_table_is_an_error(tmp_path: Path) -> None:
    write_dataset(social_dataset(), str(tmp_path))
    write_parquet(tmp_path, "likes", GOOD_LIKES)
    (tmp_path / "items.parquet").mkdir()
    err = error_of(tmp_path)
    assert str(err) == (
        f"items.csv: both items.csv and items.parquet in dataset directory {tmp_path}: keep one of them\n"
        f"likes.csv: both likes.csv and likes.parquet in dataset directory {tmp_path}: keep one of them"
    )


def test_parquet_likes_satisfy_the_required_file_and_csv_may_fill_the_rest(tmp_path: Path) -> None:
    write_parquet(tmp_path, "likes", GOOD_LIKES)
    (tmp_path / "friends.csv").write_text("user_id,friend_id,ts\nu1,u2,\n")
    ds = load_dataset(str(tmp_path))
    assert ds.items.item_id == ["i1", "i2"] and (ds.friends.src, ds.friends.dst) == (["u1"], ["u2"])


def test_unknown_items_can_be_dropped_with_a_row_in_the_warning(tmp_path: Path) -> None:
    write_parquet(tmp_path, "likes", {**GOOD_LIKES, "item_id": ["i1", "i9", "i2"]})
    write_parquet(tmp_path, "items", GOOD_ITEMS)
    warnings: list[str] = []
    ds = load_dataset(str(tmp_path), on_unknown_item="drop", warnings=warnings)
    assert ds.likes.src == ["u1", "u3"]
    assert warnings == ["likes.parquet: dropped 1 likes of items not in items.parquet (first on row 2)"]


# --------------------------------------------------------------------------- export


@pytest.mark.redis
def test_export_as_parquet_round_trips_through_redis(redis_url: str, tmp_path: Path, generated: Dataset) -> None:
    data = tmp_path / "data"
    write_dataset(generated, str(data), format="parquet")
    run = lambda *argv: subprocess.run([sys.executable, "-m", *argv], cwd=REPO, check=True, capture_output=True, text=True)  # noqa: E731
    run("serving", "load", "--data", str(data), "--redis", redis_url, "--no-progress")
    out = tmp_path / "export"
    exported = run("serving", "export", "--redis", redis_url, "--out", str(out), "--format", "parquet")
    assert exported.stdout.startswith(f"exported {len(generated.items)} items, {len(generated.likes)} likes")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.parquet" for t in TABLES)
    run("serving", "export", "--redis", redis_url, "--out", str(tmp_path / "csv"))
    live, live_csv = load_dataset(str(out)), load_dataset(str(tmp_path / "csv"))
    assert_equal(live, live_csv)
    assert f"friendships, {len(live.engagements)} engagements to " in exported.stdout and len(live.engagements)  # not left unsaid
    # The live state is the loaded dataset (Redis keeps no follow or friendship times,
    # and only some engagement kinds, one per user, item, kind and friend).
    assert set(live.items.item_id) == set(generated.items.item_id)
    assert set(zip(live.likes.src, live.likes.dst, live.likes.ts.tolist())) == set(
        zip(generated.likes.src, generated.likes.dst, generated.likes.ts.tolist()))  # fmt: skip
    assert set(zip(live.follows.src, live.follows.dst)) == set(zip(generated.follows.src, generated.follows.dst))
    assert set(zip(live.friends.src, live.friends.dst)) == set(zip(generated.friends.src, generated.friends.dst))
    assert dict(zip(live.sellers.seller_id, live.sellers.vacation_until.tolist())) == dict(
        zip(generated.sellers.seller_id, generated.sellers.vacation_until.tolist()))  # fmt: skip
    # Written over a CSV export, the Parquet one replaces it.
    run("serving", "export", "--redis", redis_url, "--out", str(tmp_path / "csv"), "--format", "parquet")
    assert not list((tmp_path / "csv").glob("*.csv"))
    assert_equal(load_dataset(str(tmp_path / "csv")), live)


@pytest.mark.redis
def test_both_export_formats_write_the_same_tables_when_no_seller_is_away_and_no_one_engaged(redis_url: str, tmp_path: Path) -> None:
    quiet = social_dataset()
    assert not len(quiet.sellers) and not len(quiet.engagements)
    client = connect(redis_url)
    load_into_redis(client, quiet)
    for format in ("csv", "parquet"):
        export_from_redis(client, str(tmp_path / format), format=format)
    client.close()
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == sorted(f"{t}.csv" for t in TABLES)
    assert sorted(p.name for p in (tmp_path / "parquet").iterdir()) == sorted(f"{t}.parquet" for t in TABLES)
    live = load_dataset(str(tmp_path / "csv"))
    assert_equal(live, load_dataset(str(tmp_path / "parquet")))
    assert set(zip(live.likes.src, live.likes.dst)) == set(zip(quiet.likes.src, quiet.likes.dst))
    assert not len(live.sellers) and not len(live.engagements)


@pytest.mark.parametrize("with_top_level_part", [False, True])
def test_a_partitioned_directory_is_refused_naming_the_partition(tmp_path: Path, with_top_level_part: bool) -> None:
    """Spark's partitionBy (Hive layout, likes.parquet/day=.../part-*.parquet) is not read: one
    line says so, where it said 'without part files', or with a part file beside the
    partitions loaded that part alone and dropped the partitions' rows without a word."""
    likes = tmp_path / "likes.parquet"
    for day in ("day=2026-01-02", "day=2026-01-01"):
        write_parquet(likes / day, "part-00000", GOOD_LIKES)
    (likes / "_SUCCESS").write_text("")
    (likes / "_temporary").mkdir()  # Spark's own: skipped, as hidden files are
    if with_top_level_part:
        write_parquet(likes, "part-00000", GOOD_LIKES)
    assert str(error_of(tmp_path)) == (
        "likes.parquet: a partitioned directory (day=2026-01-01/, day=2026-01-02/, as Spark's partitionBy writes it) is "
        "not read: write the table without partitionBy, part files directly in likes.parquet (likes.parquet/part-*.parquet)"
    )
