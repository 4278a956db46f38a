"""The generic dataset format: an interactions file and an optional items file (CSV or Parquet).

Spec: ``files:interactions=PATH[,items=PATH][,skip_bad_rows=1]`` (see :mod:`distilrec.data`).

Interactions file (required), one row per interaction; extra columns are ignored:

- ``user_id``, ``item_id``: non-empty ids (kept as text; surrounding spaces are removed)
- ``timestamp``: an integer such as Unix seconds (only the order matters; ties keep file order);
  in Parquet a timestamp column also works (converted to Unix seconds)

Items file (optional), one row per item:

- ``item_id``: non-empty, unique
- ``title``, or else ``text``: the item's name; an empty one becomes the item id
- every other text column is an attribute appended to the item text, ``genres`` and ``tags`` first,
  then the rest in file order; ``|`` separates values (as in MovieLens genres), so the item text is
  ``"{title}. genres: a, b. tags: x, y"``. Numeric columns are ignored.

Without an items file (or for an item missing from it) the item text is the item id. The format
follows the file's extension: ``.csv`` / ``.tsv`` (compressed ``.csv.gz`` etc. too) or ``.parquet``;
a path may be a local path or an fsspec URL (``s3://...`` with the matching filesystem installed).

Example ``interactions.csv``::

    user_id,item_id,timestamp
    u1,i1,1700000000
    u1,i2,1700000300

and ``items.csv`` (item ``i1`` gets the text
``"The Matrix (1999). genres: Action, Sci-Fi. tags: cyberpunk, classic"``)::

    item_id,title,genres,tags
    i1,The Matrix (1999),Action|Sci-Fi,cyberpunk|classic
    i2,Amélie (2001),Comedy|Romance,
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import fsspec
import numpy as np
import pandas as pd

from distilrec.data import tables
from distilrec.data.dataset import Dataset
from distilrec.data.tables import OnBadRows

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
FIRST_ATTRIBUTES = ("genres", "tags")


def load(interactions: str | os.PathLike, items: str | os.PathLike | None = None,
         on_bad_rows: OnBadRows = "error", name: str | None = None) -> Dataset:
    """Load the generic format; ``name`` defaults to ``files:<interactions file stem>``.

    A Parquet interactions file whose ``user_id`` and ``item_id`` columns are integers is read
    columnar (:func:`read_integer_interactions`, :meth:`Dataset.from_codes`): no Python object per
    row, so tens of millions of interactions fit in a few hundred MiB."""
    tables.check_on_bad_rows(on_bad_rows)
    stem = PurePosixPath(str(interactions)).name.split(".")[0]
    columns = read_integer_interactions(str(interactions))
    if columns is not None:
        item_text, skipped = _item_texts(str(items), on_bad_rows) if items is not None else ({}, 0)
        ds = Dataset.from_codes(name or f"files:{stem}", *columns, item_text)
        ds.skipped_rows = skipped
        return ds
    rows = tables.read_table(str(interactions), required=INTERACTION_COLUMNS, as_text=["user_id", "item_id"],
                             on_bad_rows=on_bad_rows)
    rows.drop_bad([
        tables.id_column(rows, "user_id", "user id"),
        tables.id_column(rows, "item_id", "item id"),
        tables.integer_column(rows, "timestamp", "timestamp"),
    ], on_bad_rows)
    item_text: dict[str, tuple[str, str]] = {}
    skipped = rows.log_skipped()
    if items is not None:
        item_text, skipped_items = _item_texts(str(items), on_bad_rows)
        skipped += skipped_items
    frame = rows.frame
    ds = Dataset.from_interactions(name or f"files:{stem}", frame["user_id"], frame["item_id"],
                                   frame["timestamp"].to_numpy(), item_text)
    ds.skipped_rows = skipped
    return ds


def read_integer_interactions(path: str, batch_rows: int = 1 << 20) -> tuple[np.ndarray, ...] | None:
    """``(user_id (M,) int32|int64, item_id (M,) int32, timestamp (M,) int64)`` of a Parquet file whose id
    columns are integers (and its timestamps integers or Parquet timestamps, read as Unix seconds), read
    a batch of ``batch_rows`` rows at a time into arrays allocated once; None for any other file (CSV,
    text ids), which the row-checked path reads. A missing value or an item id outside 0 .. 2³¹ - 1
    raises ``ValueError`` naming the file."""
    if not PurePosixPath(path).name.lower().endswith((".parquet", ".pq")):
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables.require_file(path)
    with fsspec.open(path, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
        except Exception as err:  # pyarrow raises several types for a file that is not Parquet
            raise ValueError(f"{path}: cannot read as Parquet ({err})") from None
        schema = pf.schema_arrow
        missing = [c for c in INTERACTION_COLUMNS if c not in schema.names]
        if missing or not all(pa.types.is_integer(schema.field(c).type) for c in ("user_id", "item_id")):
            return None
        stamp = schema.field("timestamp").type
        if not (pa.types.is_integer(stamp) or pa.types.is_timestamp(stamp)):
            return None
        n = pf.metadata.num_rows
        user_type = np.int32 if schema.field("user_id").type.bit_width <= 32 else np.int64
        out = (np.empty(n, dtype=user_type), np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int64))
        at = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=list(INTERACTION_COLUMNS)):
            k = batch.num_rows
            for column, array in zip(batch.columns, out):
                if column.null_count:
                    raise ValueError(f"{path}: missing values in an integer id or timestamp column")
                if pa.types.is_timestamp(column.type):  # unix seconds, as the row-checked path reads them
                    column = column.cast(pa.timestamp("s", tz=column.type.tz)).cast(pa.int64())
                values = column.to_numpy()
                if array.dtype == np.int32 and len(values) and (values.min() < 0 or values.max() >= 2 ** 31):
                    raise ValueError(f"{path}: item ids must lie in 0 .. 2**31 - 1 when they are integers")
                array[at:at + k] = values
            at += k
    return out


def _item_texts(path: str, on_bad_rows: OnBadRows) -> tuple[dict[str, tuple[str, str]], int]:
    """``({item id: (title, text)}, skipped rows)`` from an items file."""
    rows = tables.read_table(path, required=["item_id"], as_text=["item_id", "title", "text", *FIRST_ATTRIBUTES],
                             on_bad_rows=on_bad_rows)
    columns = list(rows.frame.columns)
    title = "title" if "title" in columns else "text" if "text" in columns else None
    if title is None:
        raise ValueError(f"{path}: needs a 'title' or 'text' column (found: {', '.join(map(str, columns))})")
    rows.drop_bad([
        tables.id_column(rows, "item_id", "item id"),
        tables.unique_check(rows, "item_id", "item id"),
    ], on_bad_rows)
    frame = rows.frame
    others = [c for c in columns if c not in ("item_id", title) and _is_text(frame[c])]
    order = [c for c in FIRST_ATTRIBUTES if c in others] + [c for c in others if c not in FIRST_ATTRIBUTES]
    attributes = {str(c): frame[c].str.replace(r"\s*\|\s*", ", ", regex=True) for c in order}
    return tables.item_texts(frame["item_id"], frame[title], attributes), rows.log_skipped()


def _is_text(column: pd.Series) -> bool:
    """A column of strings (numbers, booleans and dates are not)."""
    return pd.api.types.infer_dtype(column, skipna=True) == "string"
