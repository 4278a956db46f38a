"""MovieLens loaders: ml-latest-small / ml-25m (CSV), ml-1m (``::`` .dat) and ml-100k (``u.data``).

Every rating counts as an implicit positive interaction. Item text is
``"{title}. genres: a, b. tags: x, y"`` (tags from ``tags.csv`` where there is one, lower-cased and
de-duplicated in file order); an item without a title gets its id.

Flavours (:func:`detect`), by the files in the folder:

- ``csv`` (ml-latest-small, ml-latest, ml-25m): ``ratings.csv``, ``movies.csv`` and optionally
  ``tags.csv``; UTF-8 with a header line.
- ``dat`` (ml-1m): ``ratings.dat``, ``movies.dat``; ``::`` separated, latin-1, no header.
- ``100k`` (ml-100k): ``u.data`` (tab separated) and ``u.item`` (``|`` separated, 19 genre flags);
  latin-1, no header.

A malformed row raises :class:`~distilrec.data.tables.BadRowError` naming the file, the line and the
problem; ``on_bad_rows="skip"`` drops such rows instead, logs their number and stores it in
``Dataset.skipped_rows``. Tag rows without a tag are ignored (ml-25m has a few).

    ds = load("data/ml-latest-small")
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from distilrec.data import tables
from distilrec.data.dataset import Dataset
from distilrec.data.tables import OnBadRows, Rows

GENRES_100K = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]
_U_ITEM = ["item", "title", "release", "video_release", "imdb_url"] + GENRES_100K


def detect(path: str | Path) -> str:
    """Return the MovieLens flavour found in ``path``: "csv", "dat" or "100k"."""
    p = Path(path)
    if (p / "ratings.csv").exists() and (p / "movies.csv").exists():
        return "csv"
    if (p / "ratings.dat").exists() and (p / "movies.dat").exists():
        return "dat"
    if (p / "u.data").exists() and (p / "u.item").exists():
        return "100k"
    raise FileNotFoundError(
        f"{p}: no MovieLens files found (expected ratings.csv+movies.csv, ratings.dat+movies.dat, "
        "or u.data+u.item)"
    )


def load(path: str | Path, on_bad_rows: OnBadRows = "error") -> Dataset:
    """Load the MovieLens folder ``path`` (any flavour :func:`detect` knows).

    ``on_bad_rows="skip"`` drops malformed rows (counted in ``Dataset.skipped_rows``) instead of
    raising :class:`~distilrec.data.tables.BadRowError`.
    """
    tables.check_on_bad_rows(on_bad_rows)
    p = Path(path)
    read = {"csv": _read_csv, "dat": _read_dat, "100k": _read_100k}[detect(p)]
    ratings, movies, tags = read(p, on_bad_rows)
    ratings.drop_bad([
        tables.id_column(ratings, "user", "user id"),
        tables.id_column(ratings, "item", "item id"),
        tables.integer_column(ratings, "timestamp", "timestamp"),
    ], on_bad_rows)
    item_text = _texts(movies, tags, on_bad_rows)
    skipped = sum(t.log_skipped() for t in (ratings, movies, tags) if t is not None)
    frame = ratings.frame
    name = f"movielens:{Path(os.path.abspath(p)).name}"
    ds = Dataset.from_interactions(name, frame["user"], frame["item"], frame["timestamp"].to_numpy(), item_text)
    ds.skipped_rows = skipped
    return ds


# Each reader returns (ratings with columns user, item, timestamp; movies with item, title, genres
# where genres are "|"-separated; tags with item, tag, or None).

def _read_csv(p: Path, on_bad_rows: OnBadRows) -> tuple[Rows, Rows, Rows | None]:
    def read(name: str, required: list[str], dtype) -> Rows:
        rows = tables.read_delimited(str(p / name), required=required, dtype=dtype, on_bad_rows=on_bad_rows)
        rows.frame = rows.frame.rename(columns={"userId": "user", "movieId": "item"})
        return rows

    ratings = read("ratings.csv", ["userId", "movieId", "timestamp"], {"userId": str, "movieId": str})
    movies = read("movies.csv", ["movieId", "title", "genres"], str)
    tags = read("tags.csv", ["movieId", "tag"], str) if (p / "tags.csv").exists() else None
    return ratings, movies, tags


def _read_dat(p: Path, on_bad_rows: OnBadRows) -> tuple[Rows, Rows, None]:
    options = dict(sep="::", encoding="latin-1", quoting=csv.QUOTE_NONE, on_bad_rows=on_bad_rows)
    ratings = tables.read_delimited(str(p / "ratings.dat"), names=["user", "item", "rating", "timestamp"],
                                    dtype={"user": str, "item": str}, **options)
    movies = tables.read_delimited(str(p / "movies.dat"), names=["item", "title", "genres"], dtype=str, **options)
    return ratings, movies, None


def _read_100k(p: Path, on_bad_rows: OnBadRows) -> tuple[Rows, Rows, None]:
    options = dict(quoting=csv.QUOTE_NONE, on_bad_rows=on_bad_rows)
    ratings = tables.read_delimited(str(p / "u.data"), sep="\t", names=["user", "item", "rating", "timestamp"],
                                    dtype={"user": str, "item": str}, **options)
    movies = tables.read_delimited(str(p / "u.item"), sep="|", encoding="latin-1", names=_U_ITEM, dtype=str,
                                   **options)
    genres = pd.Series("", index=movies.frame.index, dtype=object)
    for g in GENRES_100K:  # one 0/1 flag column per genre
        genres = genres + np.where(movies.frame[g] == "1", g + "|", "")
    movies.frame["genres"] = genres.str.rstrip("|")
    return ratings, movies, None


def _texts(movies: Rows, tags: Rows | None, on_bad_rows: OnBadRows) -> dict[str, tuple[str, str]]:
    """``{item id: (title, text)}`` from the movies file (and the tags file where there is one)."""
    movies.drop_bad([
        tables.id_column(movies, "item", "movie id"),
        tables.unique_check(movies, "item", "movie id"),
    ], on_bad_rows)
    items = movies.frame
    genres = items["genres"].fillna("").astype(str).str.replace("|", ", ", regex=False)
    attributes = {"genres": genres}
    if tags is not None:
        # Lower-cased, stripped, de-duplicated per item in file order; rows without a tag are ignored.
        present = tags.frame["item"].notna() & tags.frame["tag"].notna()
        t = pd.DataFrame({"item": tags.frame["item"][present].astype(str).str.strip(),
                          "tag": tags.frame["tag"][present].astype(str).str.strip().str.lower()})
        t = t[t["tag"] != ""]
        per_item = t.drop_duplicates().groupby("item", sort=False)["tag"].agg(", ".join)
        attributes["tags"] = items["item"].map(per_item)
    return tables.item_texts(items["item"], items["title"], attributes)
