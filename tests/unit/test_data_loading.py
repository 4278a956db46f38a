"""Dataset loading in every format: the generic ``files:`` format, bad rows, empty / tiny / missing input.

Every input is written in ``tmp_path``: MovieLens CSV (with tags), ml-1m ``.dat`` (latin-1), ml-100k,
and the generic format as CSV and Parquet.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import pytest

from distilrec.data import BadRowError, load_dataset
from distilrec.data import files, movielens
from distilrec.data.dataset import Dataset

# Three users with 3, 3 and 2 interactions (user "c" is dropped by the protocol): (user, item, timestamp).
GOOD = [("a", "10", "100"), ("a", "20", "101"), ("a", "30", "99"),
        ("b", "10", "200"), ("b", "30", "201"), ("b", "40", "202"),
        ("c", "10", "5"), ("c", "20", "6")]
EXPECTED = {"a": ["30", "10", "20"], "b": ["10", "30", "40"]}


def _seqs(ds) -> dict[str, list[str]]:
    return {u: [ds.item_ids[i] for i in s] for u, s in zip(ds.user_ids, ds.sequences)}


def _text(ds, item: str) -> str:
    return ds.texts[ds.item_ids.index(item)]


# ------------------------------------------------------------------------------------- format writers
# Each writer takes interaction rows as lists of fields (user, item, timestamp), writes a dataset in
# ``folder`` and returns (spec, interactions file name, line of the first data row).

def _ml_row(fields: list[str]) -> list[str]:
    # MovieLens puts a rating between the item and the timestamp.
    return fields[:2] + ["4"] + fields[2:] if len(fields) >= 2 else fields


def write_ml_csv(folder, rows):
    folder.mkdir(exist_ok=True)
    lines = ["userId,movieId,rating,timestamp"] + [",".join(_ml_row(r)) for r in rows]
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        '10,"Matrix, The (1999)",Action|Sci-Fi\n'
        "20,Amélie (2001),Comedy|Romance\n"
        "30,Heat (1995),(no genres listed)\n"
        "40,Up (2009),\n", encoding="utf-8")
    (folder / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        "1,10,Cyberpunk,1\n"
        '2,10," cyberpunk ",2\n'
        '3,10,"red pill, blue pill",3\n'
        "4,20,,4\n"
        "5,20,Paris,5\n", encoding="utf-8")
    return f"movielens:{folder}", "ratings.csv", 2


def write_ml_dat(folder, rows):
    folder.mkdir(exist_ok=True)
    (folder / "ratings.dat").write_bytes(("\n".join("::".join(_ml_row(r)) for r in rows) + "\n").encode("latin-1"))
    (folder / "movies.dat").write_bytes(
        "10::Matrix, The (1999)::Action|Sci-Fi\n20::Amélie (2001)::Comedy|Romance\n"
        "30::Heat (1995)::Action\n40::Up (2009)::Animation\n".encode("latin-1"))
    return f"movielens:{folder}", "ratings.dat", 1


GENRES_100K = movielens.GENRES_100K


def _u_item(item: str, title: str, genres: set[str]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in GENRES_100K)
    return f"{item}|{title}|01-Jan-1995||http://us.imdb.com/M/x|{flags}"


def write_ml_100k(folder, rows):
    folder.mkdir(exist_ok=True)
    (folder / "u.data").write_text("\n".join("\t".join(_ml_row(r)) for r in rows) + "\n")
    (folder / "u.item").write_bytes(("\n".join([
        _u_item("10", "Matrix, The (1999)", {"Action", "Sci-Fi"}),
        _u_item("20", "Amélie (2001)", {"Comedy", "Romance"}),
        _u_item("30", "Heat (1995)", {"Action"}),
        _u_item("40", "Up (2009)", {"Animation"}),
    ]) + "\n").encode("latin-1"))
    return f"movielens:{folder}", "u.data", 1


ITEMS = pd.DataFrame({
    "item_id": ["10", "20", "30", "40"],
    "title": ["Matrix, The (1999)", "Amélie (2001)", "Heat (1995)", ""],
    "genres": ["Action|Sci-Fi", "Comedy|Romance", "Action", None],
    "tags": ["cyberpunk|red pill", None, None, "balloons"],
    "studio": ["Warner", "UGC", None, "Pixar"],
    "year": [1999, 2001, 1995, 2009],
})


def write_files_csv(folder, rows, items=True):
    folder.mkdir(exist_ok=True)
    lines = ["user_id,item_id,timestamp"] + [",".join(r) for r in rows]
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    spec = f"files:interactions={folder / 'interactions.csv'}"
    if items:
        ITEMS.to_csv(folder / "items.csv", index=False)
        spec += f",items={folder / 'items.csv'}"
    return spec, "interactions.csv", 2


def write_files_parquet(folder, rows, items=True):
    folder.mkdir(exist_ok=True)
    # Parquet has no "too many fields"; a short row is a null.
    padded = [list(r) + [None] * (3 - len(r)) for r in rows]
    frame = pd.DataFrame(padded, columns=["user_id", "item_id", "timestamp"])
    numeric = pd.to_numeric(frame["timestamp"], errors="coerce")
    if numeric.notna().sum() == frame["timestamp"].notna().sum():  # else a text column ("abc")
        integral = numeric.dropna().mod(1).eq(0).all()
        # an integer column, as a real log would have (a float column for "1.5")
        frame["timestamp"] = numeric.astype("Int64") if integral else numeric
    frame.to_parquet(folder / "interactions.parquet")
    spec = f"files:interactions={folder / 'interactions.parquet'}"
    if items:
        ITEMS.to_parquet(folder / "items.parquet")
        spec += f",items={folder / 'items.parquet'}"
    return spec, "interactions.parquet", 1


WRITERS = {"ml-csv": write_ml_csv, "ml-dat": write_ml_dat, "ml-100k": write_ml_100k,
           "files-csv": write_files_csv, "files-parquet": write_files_parquet}


# --------------------------------------------------------------------------------------- good input

@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_loads_the_same_interactions(tmp_path, fmt):
    spec, _, _ = WRITERS[fmt](tmp_path / "data", [list(r) for r in GOOD])
    ds = load_dataset(spec)
    assert _seqs(ds) == EXPECTED
    assert sorted(ds.item_ids) == ["10", "20", "30", "40"]
    assert ds.skipped_rows == 0
    assert [t.tolist() for t in ds.timestamps] == [[99, 100, 101], [200, 201, 202]]


@pytest.mark.parametrize("fmt", ["ml-csv", "ml-dat", "ml-100k"])
def test_movielens_item_text(tmp_path, fmt):
    spec, _, _ = WRITERS[fmt](tmp_path / "data", [list(r) for r in GOOD])
    ds = load_dataset(spec)
    matrix = "Matrix, The (1999). genres: Action, Sci-Fi"
    if fmt == "ml-csv":  # tags: lower-cased, stripped, de-duplicated; an empty tag is ignored
        matrix += ". tags: cyberpunk, red pill, blue pill"
    assert _text(ds, "10") == matrix
    assert ds.titles[ds.item_ids.index("20")] == "Amélie (2001)"
    assert _text(ds, "20").startswith("Amélie (2001). genres: Comedy, Romance")


def test_ml_csv_without_genres_has_no_genres_part(tmp_path):
    spec, _, _ = write_ml_csv(tmp_path / "data", [list(r) for r in GOOD])
    ds = load_dataset(spec)
    assert _text(ds, "40") == "Up (2009)"
    assert _text(ds, "30") == "Heat (1995). genres: (no genres listed)"


@pytest.mark.parametrize("fmt", ["files-csv", "files-parquet"])
def test_files_item_text(tmp_path, fmt):
    spec, _, _ = WRITERS[fmt](tmp_path / "data", [list(r) for r in GOOD])
    ds = load_dataset(spec)
    # title, then genres and tags, then other text columns in file order; numbers are left out
    assert _text(ds, "10") == "Matrix, The (1999). genres: Action, Sci-Fi. tags: cyberpunk, red pill. studio: Warner"
    assert _text(ds, "20") == "Amélie (2001). genres: Comedy, Romance. studio: UGC"
    assert _text(ds, "30") == "Heat (1995). genres: Action"
    assert ds.titles[ds.item_ids.index("40")] == "40"  # empty title: the id
    assert _text(ds, "40") == "40. tags: balloons. studio: Pixar"
    assert ds.name == "files:interactions"


@pytest.mark.parametrize("fmt", ["files-csv", "files-parquet"])
def test_files_without_items_use_the_id_as_text(tmp_path, fmt):
    spec, _, _ = WRITERS[fmt](tmp_path / "data", [list(r) for r in GOOD], items=False)
    ds = load_dataset(spec)
    assert ds.texts == ds.item_ids == ds.titles


def test_files_items_with_a_text_column(tmp_path):
    write_files_csv(tmp_path, [list(r) for r in GOOD], items=False)
    (tmp_path / "items.csv").write_text("item_id,text,genres\n10,Red pill,Sci-Fi\n20,Paris,\n")
    ds = files.load(tmp_path / "interactions.csv", tmp_path / "items.csv")
    assert _text(ds, "10") == "Red pill. genres: Sci-Fi"
    assert _text(ds, "20") == "Paris"
    assert _text(ds, "30") == "30"  # not in the items file


def test_files_numeric_titles_stay_text(tmp_path):
    write_files_csv(tmp_path, [list(r) for r in GOOD], items=False)
    (tmp_path / "items.csv").write_text("item_id,title,year\n10,1984,1984\n20,,2001\n30,2046,\n")
    ds = files.load(tmp_path / "interactions.csv", tmp_path / "items.csv")
    assert [_text(ds, i) for i in ("10", "20", "30")] == ["1984", "20", "2046"]


def test_files_ids_keep_leading_zeros_and_na(tmp_path):
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\nNA,007,1\nNA,08,2\nNA, 9 ,3\n")
    ds = files.load(str(tmp_path / "i.csv"))
    assert ds.user_ids == ["NA"]
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["007", "08", "9"]


def test_files_parquet_datetime_timestamps(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [5, 6, 7],
                          "timestamp": pd.to_datetime(["2024-01-03", "2024-01-01", "2024-01-02"])})
    frame.to_parquet(tmp_path / "i.parquet")
    ds = load_dataset(f"files:interactions={tmp_path / 'i.parquet'}")
    assert ds.user_ids == ["1"]
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["6", "7", "5"]
    assert ds.timestamps[0][0] == pd.Timestamp("2024-01-01").timestamp()


def test_files_compressed_csv_and_extra_columns(tmp_path):
    pd.DataFrame({"user_id": ["u"] * 3, "item_id": ["x", "y", "z"], "timestamp": [3, 1, 2],
                  "rating": [1, 2, 3]}).to_csv(tmp_path / "log.csv.gz", index=False)
    ds = load_dataset(f"files:interactions={tmp_path / 'log.csv.gz'}")
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["y", "z", "x"]
    assert ds.name == "files:log"


def test_files_from_an_fsspec_url(memory_uri):
    import fsspec

    with fsspec.open(f"{memory_uri}/log.csv", "w") as f:
        f.write("user_id,item_id,timestamp\nu,x,1\nu,y,2\nu,z,3\n")
    ds = load_dataset(f"files:interactions={memory_uri}/log.csv")
    assert ds.n_interactions == 3


def test_ml_dat_keeps_titles_with_colons(tmp_path):
    write_ml_dat(tmp_path, [list(r) for r in GOOD])
    (tmp_path / "movies.dat").write_bytes(
        "10::Star Wars: Episode IV (1977)::Action\n20::Señor (1999)::Drama\n".encode("latin-1"))
    ds = movielens.load(tmp_path)
    assert _text(ds, "10") == "Star Wars: Episode IV (1977). genres: Action"
    assert _text(ds, "20") == "Señor (1999). genres: Drama"


def test_blank_lines_are_ignored(tmp_path):
    rows = [",".join(r) for r in GOOD]
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows[:3] + [""] + rows[3:]) + "\n\n")
    assert _seqs(files.load(str(tmp_path / "i.csv"))) == EXPECTED


# ------------------------------------------------------------------------------------------ bad rows
# (name, how the row is broken, the problem the error names); ``None`` in a row drops that field.

BAD_ROWS = {
    "missing field": (["a", "50"], "timestamp is empty or missing"),
    "non-integer timestamp": (["a", "50", "abc"], "timestamp 'abc' is not an integer"),
    "decimal timestamp": (["a", "50", "1.5"], "timestamp '1.5' is not an integer"),
    "empty user id": (["", "50", "7"], "user id is empty or missing"),
    "empty item id": (["a", " ", "7"], "item id is empty or missing"),
    "too many fields": (["a", "50", "7", "extra"], r"expected \d fields, found \d"),
}


def _with_bad(bad: list[str], at: int = 2) -> list[list[str]]:
    rows = [list(r) for r in GOOD]
    return rows[:at] + [bad] + rows[at:]


@pytest.mark.parametrize("fmt, kind", [
    (fmt, kind) for fmt in WRITERS for kind in BAD_ROWS
    if not (fmt == "files-parquet" and kind == "too many fields")  # a Parquet table has no such row
])
def test_a_bad_row_names_file_line_and_problem(tmp_path, fmt, kind):
    bad, problem = BAD_ROWS[kind]
    if fmt == "files-parquet" and kind == "empty item id":
        bad = ["a", None, "7"]  # a null
    spec, filename, first = WRITERS[fmt](tmp_path / "data", _with_bad(bad))
    with pytest.raises(BadRowError) as info:
        load_dataset(spec)
    unit = "row" if fmt == "files-parquet" else "line"
    line = first + 2
    msg = str(info.value)
    assert f"{filename}, {unit} {line}: " in msg, msg
    assert str(tmp_path / "data" / filename) in msg
    assert info.value.line == line
    assert re.search(problem, msg), msg
    assert "skip_bad_rows=1" in msg  # says how to skip them


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_skip_mode_drops_and_counts_bad_rows(tmp_path, fmt, caplog):
    rows = [list(r) for r in GOOD]
    bads = [b for k, (b, _) in BAD_ROWS.items() if not (fmt == "files-parquet" and k == "too many fields")]
    if fmt == "files-parquet":
        bads = [[None if f == " " else f for f in b] for b in bads]
    for i, bad in enumerate(bads):
        rows.insert(1 + 2 * i, bad)
    spec, filename, _ = WRITERS[fmt](tmp_path / "data", rows)
    with pytest.raises(BadRowError):
        load_dataset(spec)
    with caplog.at_level(logging.WARNING, logger="distilrec.data"):
        ds = load_dataset(spec + ",skip_bad_rows=1")
    assert ds.skipped_rows == len(bads)
    assert _seqs(ds) == EXPECTED
    warnings = [r for r in caplog.records if r.name == "distilrec.data" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"skipped {len(bads)} bad rows" in warnings[0].getMessage()
    assert filename in warnings[0].getMessage()


def test_python_api_on_bad_rows(tmp_path):
    write_ml_csv(tmp_path, _with_bad(["a", "50", "x"]))
    with pytest.raises(BadRowError, match="line 4"):
        movielens.load(tmp_path)
    assert movielens.load(tmp_path, on_bad_rows="skip").skipped_rows == 1
    with pytest.raises(ValueError, match="on_bad_rows must be 'error' or 'skip'"):
        movielens.load(tmp_path, on_bad_rows="ignore")


def test_first_bad_line_is_reported_and_the_rest_counted(tmp_path):
    rows = _with_bad(["a", "50", "x"], at=4)
    rows.insert(1, ["", "50", "3"])
    write_files_csv(tmp_path, rows, items=False)
    with pytest.raises(BadRowError, match=r"line 3: user id is empty or missing \(and 1 more bad row\)"):
        files.load(str(tmp_path / "interactions.csv"))


def test_skip_log_names_the_first_bad_line(tmp_path, caplog):
    # line 3 has too many fields (the parser drops it), line 5 a bad timestamp, line 6 an empty user
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\nu,x,1\nu,y,2,3\nu,z,3\nu,w,oops\n,v,4\nu,t,5\n")
    with caplog.at_level(logging.WARNING, logger="distilrec.data"):
        assert files.load(str(tmp_path / "i.csv"), on_bad_rows="skip").skipped_rows == 3
    assert "skipped 3 bad rows (first: line 3: expected 3 fields, found 4)" in caplog.text
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\nu,x,1\nu,y,2\nu,z,3\nu,w,oops\n,v,4,5\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distilrec.data"):
        assert files.load(str(tmp_path / "i.csv"), on_bad_rows="skip").skipped_rows == 2
    assert "skipped 2 bad rows (first: line 5: timestamp 'oops' is not an integer)" in caplog.text


def test_line_numbers_after_a_skipped_line(tmp_path):
    from distilrec.data import tables

    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\nu,x,1\nu,y,2,3\n\nu,z,3,4\nu,w,oops\n")
    rows = tables.read_table(str(tmp_path / "i.csv"), required=["timestamp"], on_bad_rows="skip")
    assert rows.skipped == 2
    assert [rows.line(i) for i in range(len(rows.frame))] == [2, 6]


def test_line_numbers_count_blank_lines(tmp_path):
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\nu,x,1\n\n\nu,y,oops\n")
    with pytest.raises(BadRowError, match=r"i.csv, line 5: timestamp 'oops' is not an integer"):
        files.load(str(tmp_path / "i.csv"))


def test_bad_movies_and_items_rows(tmp_path):
    write_ml_csv(tmp_path / "ml", [list(r) for r in GOOD])
    with open(tmp_path / "ml" / "movies.csv", "a") as f:
        f.write("10,Duplicate (2000),Drama\n,No id (2000),Drama\n")
    with pytest.raises(BadRowError, match=r"movies.csv, line 6: duplicate movie id '10'"):
        movielens.load(tmp_path / "ml")
    ds = movielens.load(tmp_path / "ml", on_bad_rows="skip")
    assert ds.skipped_rows == 2
    assert ds.titles[ds.item_ids.index("10")] == "Matrix, The (1999)"

    write_files_csv(tmp_path / "f", [list(r) for r in GOOD], items=False)
    (tmp_path / "f" / "items.csv").write_text("item_id,title\n10,A\n,B\n")
    spec = f"files:interactions={tmp_path / 'f' / 'interactions.csv'},items={tmp_path / 'f' / 'items.csv'}"
    with pytest.raises(BadRowError, match=r"items.csv, line 3: item id is empty or missing"):
        load_dataset(spec)
    assert load_dataset(spec + ",skip_bad_rows=yes").skipped_rows == 1


def test_a_tags_row_with_too_many_fields(tmp_path):
    write_ml_csv(tmp_path, [list(r) for r in GOOD])
    with open(tmp_path / "tags.csv", "a") as f:
        f.write("6,30,a,b,6\n")
    with pytest.raises(BadRowError, match=r"tags.csv, line 7: expected 4 fields, found 5"):
        movielens.load(tmp_path)
    assert movielens.load(tmp_path, on_bad_rows="skip").skipped_rows == 1


def test_not_utf8_is_a_clear_error(tmp_path):
    write_ml_csv(tmp_path, [list(r) for r in GOOD])
    (tmp_path / "movies.csv").write_bytes("movieId,title,genres\n10,Am\xe9lie,Drama\n".encode("latin-1"))
    with pytest.raises(ValueError, match="movies.csv: not valid utf-8 text"):
        movielens.load(tmp_path)


# ------------------------------------------------------------------------------ empty, tiny, missing

@pytest.mark.parametrize("fmt", list(WRITERS))
def test_no_rows_is_a_clear_error(tmp_path, fmt):
    spec, _, _ = WRITERS[fmt](tmp_path / "data", [])
    with pytest.raises(ValueError, match="has no interactions"):
        load_dataset(spec)


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_too_few_interactions_is_a_clear_error(tmp_path, fmt):
    spec, _, _ = WRITERS[fmt](tmp_path / "data", [["a", "10", "1"], ["a", "20", "2"], ["b", "10", "3"]])
    with pytest.raises(ValueError, match="no user with at least 3 interactions"):
        load_dataset(spec)


@pytest.mark.parametrize("name", ["ratings.csv", "movies.csv", "tags.csv"])
def test_zero_byte_file_is_a_clear_error(tmp_path, name):
    write_ml_csv(tmp_path, [list(r) for r in GOOD])
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=f"{name}: file is empty"):
        movielens.load(tmp_path)


def test_zero_byte_files_format(tmp_path):
    (tmp_path / "i.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="i.csv: file is empty"):
        load_dataset(f"files:interactions={tmp_path / 'i.csv'}")


def test_skipping_every_row_is_a_clear_error(tmp_path):
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\nu,x,a\nu,y,b\n")
    with pytest.raises(ValueError, match="has no interactions"):
        load_dataset(f"files:interactions={tmp_path / 'i.csv'},skip_bad_rows=1")


@pytest.mark.parametrize("columns, missing", [
    ("user_id,item_id,time", "timestamp"), ("user,item_id,timestamp", "user_id"),
])
def test_missing_columns_are_named(tmp_path, columns, missing):
    (tmp_path / "i.csv").write_text(columns + "\nu,x,1\n")
    with pytest.raises(ValueError, match=f"i.csv: missing column {missing} \\(found: {columns.replace(',', ', ')}\\)"):
        load_dataset(f"files:interactions={tmp_path / 'i.csv'}")


def test_missing_parquet_column_is_named(tmp_path):
    pd.DataFrame({"user_id": ["u"], "item_id": ["x"]}).to_parquet(tmp_path / "i.parquet")
    with pytest.raises(ValueError, match="i.parquet: missing column timestamp"):
        load_dataset(f"files:interactions={tmp_path / 'i.parquet'}")


def test_items_file_needs_a_title_or_text(tmp_path):
    write_files_csv(tmp_path, [list(r) for r in GOOD], items=False)
    (tmp_path / "items.csv").write_text("item_id,genres\n10,Drama\n")
    with pytest.raises(ValueError, match="items.csv: needs a 'title' or 'text' column"):
        files.load(str(tmp_path / "interactions.csv"), str(tmp_path / "items.csv"))


def test_missing_files_are_named(tmp_path):
    write_files_csv(tmp_path, [list(r) for r in GOOD], items=False)
    with pytest.raises(FileNotFoundError, match="nope.csv: no such file"):
        load_dataset(f"files:interactions={tmp_path / 'nope.csv'}")
    with pytest.raises(FileNotFoundError, match="items.parquet: no such file"):
        load_dataset(f"files:interactions={tmp_path / 'interactions.csv'},items={tmp_path / 'items.parquet'}")
    with pytest.raises(FileNotFoundError, match="no MovieLens files"):
        load_dataset(f"movielens:{tmp_path / 'nowhere'}")


def test_not_a_parquet_file(tmp_path):
    (tmp_path / "i.parquet").write_text("user_id,item_id,timestamp\n")
    with pytest.raises(ValueError, match="i.parquet: cannot read as Parquet"):
        load_dataset(f"files:interactions={tmp_path / 'i.parquet'}")


# ---------------------------------------------------------------------------------------- spec syntax

@pytest.mark.parametrize("spec, match", [
    ("files:", "needs an interactions file"),
    ("files:items=x.csv", "needs an interactions file"),
    ("files:interactions=x.csv,colour=red", "unknown option 'colour'"),
    ("files:interactions", "bad files option 'interactions'"),
    ("files:interactions=x.csv,skip_bad_rows=maybe", "skip_bad_rows='maybe'"),
    ("movielens:/data/ml,skip_bad_rows=2", "skip_bad_rows='2'"),
    ("movielens:/data/ml,colour=red", "unknown option 'colour'"),
    ("files:interactions=x.json", "unknown file type"),
])
def test_bad_specs(tmp_path, spec, match):
    if "x.json" in spec:
        (tmp_path / "x.json").write_text("{}")
        spec = spec.replace("x.json", str(tmp_path / "x.json"))
    with pytest.raises(ValueError, match=match):
        load_dataset(spec)


def test_movielens_relative_path(tmp_path, monkeypatch):
    write_ml_csv(tmp_path / "ml-mine", [list(r) for r in GOOD])
    monkeypatch.chdir(tmp_path / "ml-mine")
    assert load_dataset("movielens:.").name == "movielens:ml-mine"
    monkeypatch.chdir(tmp_path)
    assert load_dataset("movielens:ml-mine").name == "movielens:ml-mine"


def test_movielens_path_with_a_comma(tmp_path):
    spec, _, _ = write_ml_csv(tmp_path / "ml,small", [list(r) for r in GOOD])
    assert load_dataset(spec).name == "movielens:ml,small"
    assert load_dataset(spec + ",skip_bad_rows=0").n_users == 2


def test_missing_ids_in_from_interactions_are_an_error():
    with pytest.raises(ValueError, match="user ids contain missing values"):
        Dataset.from_interactions("x", ["u", None, "u"], ["a", "b", "c"], [1, 2, 3], {})
    assert Dataset.from_interactions("x", ["u"] * 3, ["a", "b", "c"], [1, 2, 3], {}).skipped_rows == 0


def test_real_ml_latest_small_has_no_bad_rows(ml_small):
    ds = movielens.load(ml_small)
    assert ds.skipped_rows == 0
    assert np.all([np.all(np.diff(t) >= 0) for t in ds.timestamps])


def test_integer_parquet_is_read_columnar_as_the_row_checked_path_reads_it(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id": rng.integers(0, 40, 600).astype(np.int32),
                          "item_id": rng.integers(0, 90, 600).astype(np.int32),
                          "timestamp": rng.integers(0, 50, 600)})  # many ties: the file's order must hold
    frame.to_parquet(tmp_path / "i.parquet", row_group_size=100)
    pd.DataFrame({"item_id": np.arange(90), "title": [f"t{i}" for i in range(90)],
                  "genres": ["a|b"] * 90}).to_parquet(tmp_path / "items.parquet")
    columns = files.read_integer_interactions(str(tmp_path / "i.parquet"), batch_rows=64)
    assert [c.dtype for c in columns] == [np.int32, np.int32, np.int64]
    fast = files.load(tmp_path / "i.parquet", tmp_path / "items.parquet")
    frame.astype({"user_id": str, "item_id": str}).to_csv(tmp_path / "i.csv", index=False)
    pd.read_parquet(tmp_path / "items.parquet").astype({"item_id": str}).to_csv(tmp_path / "items.csv", index=False)
    checked = files.load(tmp_path / "i.csv", tmp_path / "items.csv")
    assert _seqs(fast) == _seqs(checked) and fast.n_items == checked.n_items
    assert {u: t.tolist() for u, t in zip(fast.user_ids, fast.timestamps)} == \
        {u: t.tolist() for u, t in zip(checked.user_ids, checked.timestamps)}
    assert _text(fast, "5") == _text(checked, "5") == "t5. genres: a, b"
    assert fast.user_ids == sorted(fast.user_ids, key=int)  # users in ascending id order
    assert files.read_integer_interactions(str(tmp_path / "i.csv")) is None
