"""MovieLens loaders: ml-latest-small from ``../shared`` and small ml-1m / ml-100k files in ``tmp_path``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from distilrec.data import Split, load_dataset
from distilrec.data.movielens import detect, load


def _seq(ds, user: str) -> list[str]:
    return [ds.item_ids[i] for i in ds.sequences[ds.user_ids.index(user)]]


def _text(ds, item: str) -> str:
    return ds.texts[ds.item_ids.index(item)]


# ------------------------------------------------------------------------------------ ml-latest-small

@pytest.fixture(scope="module")
def ml_small_ds(ml_small):
    return load_dataset(f"movielens:{ml_small}")


def test_ml_latest_small_counts(ml_small, ml_small_ds):
    assert detect(ml_small) == "csv"
    assert ml_small_ds.summary() == {
        "name": "movielens:ml-latest-small", "users": 610, "items": 9724, "interactions": 100836,
    }


def test_ml_latest_small_sequences_follow_the_protocol(ml_small, ml_small_ds):
    ratings = pd.read_csv(ml_small / "ratings.csv", dtype={"userId": str, "movieId": str})
    expected = (
        ratings.sort_values("timestamp", kind="stable").groupby("userId", sort=False)["movieId"].apply(list)
    )
    assert set(ml_small_ds.user_ids) == set(expected.index)
    for u, seq in zip(ml_small_ds.user_ids, ml_small_ds.sequences):
        assert [ml_small_ds.item_ids[i] for i in seq] == expected[u]
    split = Split.leave_one_out(ml_small_ds)
    assert len(split.test_target) == 610


def test_ml_latest_small_item_text(ml_small_ds):
    text = _text(ml_small_ds, "1")
    assert text.startswith("Toy Story (1995). genres: Adventure, Animation, Children, Comedy, Fantasy. tags: ")
    assert "pixar" in text and "fun" in text
    assert ml_small_ds.titles[ml_small_ds.item_ids.index("1")] == "Toy Story (1995)"


# ------------------------------------------------------------------------------------------ ml-1m .dat

def _write_ml1m(folder):
    folder.mkdir()
    (folder / "ratings.dat").write_bytes(
        "\n".join([
            "1::10::5::978300760",
            "1::20::3::978300760",  # same second as the line above: keeps file order
            "1::30::4::978300000",
            "2::20::4::978300100",
            "2::30::2::978300200",
            "2::10::1::978300050",
            "3::40::1::5",  # user 3 has two ratings: dropped, and with it item 40
            "3::10::1::6",
        ]).encode("latin-1") + b"\n"
    )
    (folder / "movies.dat").write_bytes(
        "\n".join([
            "10::Amélie (2001)::Comedy|Romance",
            "20::Señor Film (1999)::Drama",
            "30::Plain (1990)::Action",
            "40::Dropped (1980)::Horror",
        ]).encode("latin-1") + b"\n"
    )


def test_ml1m_dat(tmp_path):
    folder = tmp_path / "ml-1m"
    _write_ml1m(folder)
    assert detect(folder) == "dat"
    ds = load_dataset(f"movielens:{folder}")
    assert ds.name == "movielens:ml-1m"
    assert sorted(ds.user_ids) == ["1", "2"]
    assert sorted(ds.item_ids) == ["10", "20", "30"]
    assert _seq(ds, "1") == ["30", "10", "20"]
    assert _seq(ds, "2") == ["10", "20", "30"]
    assert ds.titles[ds.item_ids.index("10")] == "Amélie (2001)"
    assert _text(ds, "10") == "Amélie (2001). genres: Comedy, Romance"
    assert _text(ds, "20") == "Señor Film (1999). genres: Drama"


# ------------------------------------------------------------------------------------ ml-100k u.data

def _u_item_line(item: int, title: str, genres: set[str]) -> str:
    names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
             "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
             "War", "Western"]
    flags = "|".join("1" if g in genres else "0" for g in names)
    return f"{item}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?x|{flags}"


def test_ml100k_u_data(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text(
        "\n".join([
            "196\t242\t3\t881250949",
            "196\t302\t3\t881250900",
            "196\t377\t1\t881250949",
            "186\t302\t3\t891717742",
            "186\t242\t3\t891717700",
            "186\t377\t1\t878887116",
            "22\t999\t1\t878887116",
        ]) + "\n"
    )
    (folder / "u.item").write_bytes(
        "\n".join([
            _u_item_line(242, "Kolya (1996)", {"Comedy"}),
            _u_item_line(302, "L.A. Confidential (1997)", {"Crime", "Film-Noir", "Mystery", "Thriller"}),
            _u_item_line(377, "Café au lait (1993)", {"Children's", "Comedy"}),
            _u_item_line(999, "Unused (1990)", {"unknown"}),
        ]).encode("latin-1") + b"\n"
    )
    assert detect(folder) == "100k"
    ds = load(folder)
    assert ds.name == "movielens:ml-100k"
    assert sorted(ds.user_ids) == ["186", "196"]  # user 22 has one rating
    assert sorted(ds.item_ids) == ["242", "302", "377"]
    assert _seq(ds, "196") == ["302", "242", "377"]
    assert _seq(ds, "186") == ["377", "242", "302"]
    assert _text(ds, "302") == "L.A. Confidential (1997). genres: Crime, Film-Noir, Mystery, Thriller"
    assert _text(ds, "377") == "Café au lait (1993). genres: Children's, Comedy"
    assert ds.titles[ds.item_ids.index("242")] == "Kolya (1996)"


def test_csv_with_tags(tmp_path):
    folder = tmp_path / "ml-tiny"
    folder.mkdir()
    pd.DataFrame({"userId": [1, 1, 1], "movieId": [5, 6, 7], "rating": [4.0, 3.0, 5.0],
                  "timestamp": [3, 2, 1]}).to_csv(folder / "ratings.csv", index=False)
    pd.DataFrame({"movieId": [5, 6, 7], "title": ["A (2000)", "B (2001)", "C (2002)"],
                  "genres": ["Drama", "Comedy|Drama", "(no genres listed)"]}).to_csv(folder / "movies.csv",
                                                                                  index=False)
    pd.DataFrame({"userId": [1, 2, 3], "movieId": [6, 6, 6], "tag": ["Funny", " funny ", "Dark"],
                  "timestamp": [1, 2, 3]}).to_csv(folder / "tags.csv", index=False)
    ds = load(folder)
    assert _seq(ds, "1") == ["7", "6", "5"]
    assert _text(ds, "6") == "B (2001). genres: Comedy, Drama. tags: funny, dark"
    assert _text(ds, "5") == "A (2000). genres: Drama"
    assert np.array_equal(ds.timestamps[0], [1, 2, 3])


def test_detect_without_files_is_an_error(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")  # movies.csv missing
    with pytest.raises(FileNotFoundError, match="no MovieLens files"):
        detect(tmp_path)
