"""Reading tabular input files (CSV, ``::``/tab/``|`` separated text, Parquet) with row checks,
and the item text that the MovieLens and generic loaders share.

Every reader returns :class:`Rows`: a DataFrame plus the bookkeeping that turns a row back into the
place a user finds it in an editor: ``PATH, line N`` (1-based, a header is line 1) for text files,
``PATH, row N`` (1-based) for Parquet. Checks are vectorised: each is a boolean "bad" mask and a
function that describes the problem of one row. :meth:`Rows.drop_bad` then either raises
:class:`BadRowError` for the first bad row of the file or, with ``on_bad_rows="skip"``, drops every
bad row and counts it; :meth:`Rows.log_skipped` logs the count (logger ``distilrec.data``).

Text files are parsed by pandas' C parser (fast enough for ml-25m's 25M rows); only an empty field
counts as missing (``"NA"`` stays an id). Blank lines are ignored. Line numbers assume that no
quoted value spans several lines.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable, Literal, Mapping, Sequence

import fsspec
import numpy as np
import pandas as pd

OnBadRows = Literal["error", "skip"]
ON_BAD_ROWS = ("error", "skip")

log = logging.getLogger("distilrec.data")

#: One vectorised check: a boolean mask of bad rows, and ``describe(position) -> problem``.
Check = tuple[np.ndarray, Callable[[int], str]]

_SEP = "\x1f"  # ASCII unit separator: stands in for a multi-character separator such as "::"
_PARSER_ERROR = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_PARSER_SKIP = re.compile(r"Skipping line (\d+): expected (\d+) fields, saw (\d+)")
_INTEGER = r"\s*[+-]?\d+\s*"
_PANDAS_VERSION = tuple(int(x) for x in re.findall(r"\d+", pd.__version__)[:2])
_HINT = "; pass on_bad_rows='skip' (spec option skip_bad_rows=1) to skip bad rows"


class BadRowError(ValueError):
    """A malformed input row: ``str(err)`` is ``"PATH, line N: problem"``."""

    def __init__(self, message: str, path: str, line: int, problem: str):
        super().__init__(message)
        self.path, self.line, self.problem = path, line, problem


@dataclass
class Rows:
    """The rows read from one file; the frame's index is the row's position in the file.

    ``first_line`` is the line (or Parquet row) number of row 0; ``parser_skipped`` holds the lines
    that the parser dropped itself (too many fields, skip mode), so that later line numbers stay
    right. ``skipped`` counts the bad rows dropped so far, ``first_problem`` is ``(line, problem)``
    of the first of them (for the log).
    """

    path: str
    frame: pd.DataFrame
    first_line: int
    unit: str = "line"
    parser_skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    skipped: int = 0
    first_problem: tuple[int, str] | None = None

    def line(self, position: int) -> int:
        """The 1-based line (or row) number of the frame's row at ``position``."""
        # Blank lines are rows too (dropped after reading, index kept); lines the parser dropped are
        # not, so count those before the row: the k-th (ascending) displaced row ``line - first - k``.
        row = int(self.frame.index[position])
        displaced = self.parser_skipped - self.first_line - np.arange(len(self.parser_skipped))
        return self.first_line + row + int(np.searchsorted(displaced, row, side="right"))

    def where(self, position: int) -> str:
        return f"{self.path}, {self.unit} {self.line(position)}"

    def drop_bad(self, checks: Sequence[Check], on_bad_rows: OnBadRows) -> None:
        """Raise for the first bad row (``"error"``) or drop and count all bad rows (``"skip"``)."""
        bad = np.zeros(len(self.frame), dtype=bool)
        for mask, _ in checks:
            bad |= np.asarray(mask, dtype=bool)
        if not bad.any():
            return
        position = int(np.argmax(bad))
        problem = next(describe(position) for mask, describe in checks if mask[position])
        if on_bad_rows == "error":
            more = int(bad.sum()) - 1
            raise BadRowError(
                f"{self.where(position)}: {problem}"
                + (f" (and {more} more bad row{'s' if more > 1 else ''})" if more else "") + _HINT,
                self.path, self.line(position), problem,
            )
        first = (self.line(position), problem)
        self.first_problem = min(self.first_problem, first) if self.first_problem else first
        self.skipped += int(bad.sum())
        self.frame = self.frame[~bad].copy()

    def log_skipped(self) -> int:
        """Log a warning when rows were skipped; return the count."""
        if self.skipped:
            line, problem = self.first_problem or (0, "?")
            log.warning("%s: skipped %d bad row%s (first: %s %d: %s)", self.path, self.skipped,
                        "s" if self.skipped > 1 else "", self.unit, line, problem)
        return self.skipped


# --------------------------------------------------------------------------------------------- readers

def check_on_bad_rows(on_bad_rows: str) -> None:
    if on_bad_rows not in ON_BAD_ROWS:
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', not {on_bad_rows!r}")


def require_file(path: str) -> None:
    """Raise ``FileNotFoundError`` naming ``path`` (a local path or an fsspec URL) when it is absent."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    if not fs.isfile(fs_path):
        raise FileNotFoundError(f"{path}: no such file")


def read_table(path: str, *, required: Sequence[str], as_text: Sequence[str] = (),
               on_bad_rows: OnBadRows = "error") -> Rows:
    """Read a CSV / TSV (optionally compressed, e.g. ``.csv.gz``) or Parquet file by its extension.

    ``required`` columns must be in the header. CSV columns named in ``as_text`` are read as text
    (where present); the others get pandas' type inference, so an integer timestamp column parses
    as int64 (the fast path).
    """
    name = PurePosixPath(path).name.lower()
    if name.endswith((".parquet", ".pq")):
        return read_parquet(path, required=required)
    for ext, sep in ((".csv", ","), (".tsv", "\t")):
        if name.endswith(ext) or ext + "." in name:
            return read_delimited(path, sep=sep, required=required, dtype={c: str for c in as_text},
                                  on_bad_rows=on_bad_rows)
    raise ValueError(f"{path}: unknown file type (expected .csv, .tsv or .parquet)")


def read_delimited(
    path: str,
    *,
    sep: str = ",",
    names: Sequence[str] | None = None,
    required: Sequence[str] = (),
    dtype: Mapping[str, type] | type | None = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
    on_bad_rows: OnBadRows = "error",
) -> Rows:
    """Read a delimited text file: with a header line, or headerless with ``names``.

    A row with more fields than the header (or ``names``) is a bad row; a row with fewer fields gets
    empty values, which the caller's checks report. A multi-character ``sep`` (MovieLens ``::``) is
    replaced by one character first, so that pandas' fast C parser reads the file.
    """
    check_on_bad_rows(on_bad_rows)
    require_file(path)
    kwargs = dict(
        sep=sep if len(sep) == 1 else _SEP, encoding=encoding, quoting=quoting, dtype=dtype,
        index_col=False, keep_default_na=False, na_values=[""], skip_blank_lines=False,
        header=None if names is not None else "infer", names=names,
        on_bad_lines="warn" if on_bad_rows == "skip" else "error",
    )
    # pandas reports each line it skips (too many fields) as a ParserWarning; before 2.2 it printed
    # them to stderr instead.
    printed = io.StringIO()
    old_pandas_skip = on_bad_rows == "skip" and _PANDAS_VERSION < (2, 2)
    with warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stderr(printed) if old_pandas_skip else contextlib.nullcontext():
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            source: object = path
            if len(sep) > 1:
                with fsspec.open(path, "rt", encoding=encoding, newline="") as f:
                    source = io.StringIO(f.read().replace(sep, _SEP))
            frame = pd.read_csv(source, **kwargs)
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path}: file is empty") from None
        except pd.errors.ParserError as err:
            raise _parser_error(path, str(err)) from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not valid {encoding} text ({err})") from None
    reports = [str(w.message) for w in caught] + [printed.getvalue()]
    parser_skips = [m for text in reports for m in _PARSER_SKIP.finditer(text)]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {', '.join(map(str, frame.columns))})"
        )
    rows = Rows(path, frame, first_line=1 if names is not None else 2,
                parser_skipped=np.sort([int(m.group(1)) for m in parser_skips]).astype(np.int64))
    if parser_skips:
        line, n, saw = parser_skips[0].groups()
        rows.skipped = len(parser_skips)
        rows.first_problem = (int(line), f"expected {n} fields, found {saw}")
    blank = frame.isna().all(axis=1).to_numpy()
    if blank.any():
        rows.frame = frame[~blank].copy()
    return rows


def read_parquet(path: str, *, required: Sequence[str] = ()) -> Rows:
    """Read a Parquet file; rows are numbered from 1 (there are no lines)."""
    require_file(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise ValueError(f"{path}: cannot read as Parquet ({err})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"(found: {', '.join(map(str, frame.columns))})")
    return Rows(path, frame.reset_index(drop=True), first_line=1, unit="row")


def _parser_error(path: str, message: str) -> ValueError:
    m = _PARSER_ERROR.search(message)
    if not m:
        return ValueError(f"{path}: {message.strip()}")
    n, line, saw = m.groups()
    problem = f"expected {n} fields, found {saw}"
    return BadRowError(f"{path}, line {line}: {problem}{_HINT}", path, int(line), problem)


# ---------------------------------------------------------------------------------------------- checks

# Each check function replaces the column in ``rows.frame`` by its clean value and returns the check;
# the caller runs ``rows.drop_bad([...checks])`` once and then reads the clean columns.

def id_column(rows: Rows, column: str, label: str) -> Check:
    """Make ``column`` stripped text; the check is "``label`` is empty or missing"."""
    values = rows.frame[column]
    missing = values.isna().to_numpy()
    text = values.astype(str).str.strip()
    rows.frame[column] = text
    empty = missing | (text == "").fillna(True).to_numpy(dtype=bool)
    return empty, lambda _: f"{label} is empty or missing"


def unique_check(rows: Rows, column: str, label: str) -> Check:
    """The check "duplicate ``label``" (the first occurrence is kept)."""
    ids = rows.frame[column]
    dup = ids.duplicated().to_numpy()
    return dup, lambda pos: f"duplicate {label} {ids.iloc[pos]!r}"


def integer_column(rows: Rows, column: str, label: str) -> Check:
    """Make ``column`` int64 (0 in bad rows); the check is "``label`` is not an integer".

    Integer columns pass as they are (the fast path: pandas already parsed them); datetime columns
    (Parquet) become Unix seconds; text is checked with a regular expression and then converted.
    Float columns appear when a value has a decimal point: their integral values are kept (exact up
    to 2**53).
    """
    values = rows.frame[column]
    missing = values.isna().to_numpy()
    if pd.api.types.is_integer_dtype(values.dtype) and not missing.any():
        rows.frame[column] = values.to_numpy(dtype=np.int64)
        return missing, lambda _: ""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        seconds = (values - pd.Timestamp(0, tz=getattr(values.dt, "tz", None))) // pd.Timedelta(seconds=1)
        bad = missing
        ints = seconds.fillna(0).to_numpy(dtype=np.int64)
    elif pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        floats = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(floats) | (np.floor(floats) != floats)
        ints = np.where(bad, 0, floats).astype(np.int64)
    else:
        text = values.astype(str)
        bad = missing | ~text.str.fullmatch(_INTEGER).fillna(False).to_numpy(dtype=bool)
        ints = text.where(~bad, "0").str.strip().astype(np.int64).to_numpy()

    def describe(pos: int) -> str:
        if missing[pos]:
            return f"{label} is empty or missing"
        return f"{label} '{values.iloc[pos]}' is not an integer"

    rows.frame[column] = ints
    return bad, describe


# ------------------------------------------------------------------------------------------- item text

def item_texts(ids: pd.Series, titles: pd.Series, attributes: dict[str, pd.Series]) -> dict[str, tuple[str, str]]:
    """``{id: (title, "title. name: value. name: value")}``; empty attribute values are left out.

    ``ids``, ``titles`` and every attribute are aligned Series; an empty title becomes the id.
    """
    titles = titles.fillna("").astype(str).str.strip()
    titles = titles.where(titles != "", ids)
    text = titles.copy()
    for name, values in attributes.items():
        values = values.fillna("").astype(str).str.strip()
        has = (values != "").to_numpy()
        text[has] = text[has] + f". {name}: " + values[has]
    return dict(zip(ids.astype(str), zip(titles.astype(str), text.astype(str))))
