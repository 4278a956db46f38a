"""MovieLens loaders: ml-latest-small / ml-25m (CSV), ml-1m (``::`` .dat) and ml-100k (``u.data``).

Every rating counts as an implicit positive interaction. Item text is ``title. genres: ... tags: ...``.

    ds = load("../shared/datasets/ml-latest-small")
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from distilrec.data.dataset import Dataset


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


def _texts(movies: pd.DataFrame, tags: pd.DataFrame | None) -> dict[str, tuple[str, str]]:
    tag_text: dict[str, str] = {}
    if tags is not None and len(tags):
        grouped = tags.dropna().groupby("item")["tag"].apply(
            lambda s: ", ".join(dict.fromkeys(str(t).strip().lower() for t in s))
        )
        tag_text = grouped.to_dict()
    out = {}
    for item, title, genres in movies[["item", "title", "genres"]].itertuples(index=False):
        text = f"{title}. genres: {str(genres).replace('|', ', ')}"
        if item in tag_text:
            text += f". tags: {tag_text[item]}"
        out[item] = (str(title), text)
    return out


def load(path: str | Path) -> Dataset:
    p = Path(path)
    flavour = detect(p)
    tags = None
    if flavour == "csv":
        ratings = pd.read_csv(p / "ratings.csv", dtype={"userId": str, "movieId": str})
        ratings = ratings.rename(columns={"userId": "user", "movieId": "item"})
        movies = pd.read_csv(p / "movies.csv", dtype={"movieId": str}).rename(columns={"movieId": "item"})
        if (p / "tags.csv").exists():
            tags = pd.read_csv(p / "tags.csv", dtype={"movieId": str}).rename(columns={"movieId": "item"})
    elif flavour == "dat":
        ratings = pd.read_csv(
            p / "ratings.dat", sep="::", engine="python", encoding="latin-1",
            names=["user", "item", "rating", "timestamp"], dtype={"user": str, "item": str},
        )
        movies = pd.read_csv(
            p / "movies.dat", sep="::", engine="python", encoding="latin-1",
            names=["item", "title", "genres"], dtype={"item": str},
        )
    else:
        ratings = pd.read_csv(
            p / "u.data", sep="\t", names=["user", "item", "rating", "timestamp"],
            dtype={"user": str, "item": str},
        )
        genre_names = [
            "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
            "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
            "Romance", "Sci-Fi", "Thriller", "War", "Western",
        ]
        raw = pd.read_csv(
            p / "u.item", sep="|", encoding="latin-1", header=None, dtype={0: str},
        )
        flags = raw.iloc[:, 5:5 + len(genre_names)].to_numpy()
        movies = pd.DataFrame({
            "item": raw[0],
            "title": raw[1],
            "genres": ["|".join(g for g, f in zip(genre_names, row) if f == 1) for row in flags],
        })
    return Dataset.from_interactions(
        f"movielens:{p.name}",
        ratings["user"].to_numpy(),
        ratings["item"].to_numpy(),
        ratings["timestamp"].to_numpy(),
        _texts(movies, tags),
    )
