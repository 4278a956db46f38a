"""Datasets: the synthetic generator, MovieLens loaders, the generic file format, the leave-one-out split.

``load_dataset(spec)`` understands ``KIND:ARGS``, where ARGS is a comma-separated list:

- ``synthetic`` or ``synthetic:users=5000,items=2000,seed=0`` (also ``min_len``, ``max_len``,
  ``p_series``, ``p_topic``); above 50,000 users or items (or with ``chunked=1``) generated in chunks of
  users as Parquet under ``$DISTILREC_DATA_DIR/synthetic/`` (once) and read columnar, so
  ``synthetic:users=200000,items=1000000,min_len=50,max_len=150`` fits in bounded memory. See
  :mod:`distilrec.data.synthetic`.
- ``movielens:PATH[,skip_bad_rows=1]``: a MovieLens folder, detected by its files: ml-latest-small /
  ml-25m (``ratings.csv``, ``movies.csv``, ``tags.csv``), ml-1m (``::`` separated ``.dat``, latin-1),
  ml-100k (``u.data`` + ``u.item``, latin-1). See :mod:`distilrec.data.movielens`.
- ``movielens:NAME[,skip_bad_rows=1]`` with NAME one of ``ml-latest-small``, ``ml-25m``, ``ml-1m``,
  ``ml-100k`` (and no such path exists): downloaded once from GroupLens into ``$DISTILREC_DATA_DIR``
  (default ``$XDG_CACHE_HOME/distilrec/datasets``, else ``~/.cache/distilrec/datasets``), then loaded.
  See :mod:`distilrec.data.download`.
- ``files:interactions=PATH[,items=PATH][,skip_bad_rows=1]``: the generic format, CSV or Parquet by
  extension. Interactions have columns ``user_id``, ``item_id``, ``timestamp`` (integer); items have
  ``item_id``, ``title`` (or ``text``) and optional attribute columns such as ``genres``, ``tags``.
  Item text is ``"{title}. genres: a, b. tags: x, y"``; without an items file it is the item id.
  See :mod:`distilrec.data.files`.

Bad rows: a malformed row (a missing or empty id, a timestamp that is not an integer, too many
fields, ...) raises :class:`~distilrec.data.tables.BadRowError`, a ``ValueError`` whose message
names the file, the line (1-based, the header is line 1) and the problem, e.g.
``ratings.csv, line 7: timestamp 'abc' is not an integer``. The option ``skip_bad_rows=1`` (in
Python: ``on_bad_rows="skip"``) drops such rows instead, logs a warning with their number on the
``distilrec.data`` logger and stores it in ``Dataset.skipped_rows``. A missing file raises
``FileNotFoundError`` naming it; an empty file or one with too few interactions left (no user with at
least 3) raises ``ValueError``.

>>> load_dataset("synthetic:users=20,items=30,seed=1").n_users
20
"""

from __future__ import annotations

import re
from pathlib import Path

from distilrec.data.dataset import Dataset, Split
from distilrec.data.tables import BadRowError, OnBadRows

__all__ = ["BadRowError", "Dataset", "Split", "load_dataset"]

_SYNTHETIC_KEYS = {"users": int, "items": int, "seed": int, "min_len": int, "max_len": int,
                   "p_series": float, "p_topic": float, "chunked": int}
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_OPTION = re.compile(r"^([A-Za-z_]+)=(.*)$")
_KINDS = "'synthetic[:k=v,...]', 'movielens:PATH[,skip_bad_rows=1]' or 'files:interactions=PATH[,items=PATH]'"


def load_dataset(spec: str) -> Dataset:
    """Load the dataset that ``spec`` names (syntax in the module docstring).

    - ``synthetic[:users=N,items=N,seed=N,...]``
    - ``movielens:PATH[,skip_bad_rows=1]`` or ``movielens:NAME[,skip_bad_rows=1]`` (downloaded)
    - ``files:interactions=PATH[,items=PATH][,skip_bad_rows=1]`` (CSV or Parquet)

    A bad spec raises ``ValueError`` naming it; a malformed row raises ``BadRowError`` (a
    ``ValueError``) naming the file, the line and the problem unless ``skip_bad_rows=1``.
    """
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        from distilrec.data import synthetic

        kwargs = {}
        for part in filter(None, rest.split(",")):
            key, eq, value = part.partition("=")
            if not eq or key not in _SYNTHETIC_KEYS:
                raise ValueError(
                    f"bad synthetic option {part!r} in {spec!r}; known: {', '.join(_SYNTHETIC_KEYS)}"
                )
            try:
                kwargs[key] = _SYNTHETIC_KEYS[key](value)
            except ValueError:
                raise ValueError(f"synthetic option {key}={value!r} is not a number") from None
        return synthetic.load(**kwargs)
    if kind == "movielens":
        return _movielens(spec, rest)
    if kind == "files":
        return _files(spec, rest)
    raise ValueError(f"unknown dataset spec {spec!r} (expected {_KINDS})")


def _movielens(spec: str, rest: str) -> Dataset:
    from distilrec.data import download, movielens

    # Options are trailing ",key=value" parts; whatever comes before them is the path (commas allowed).
    path, options = rest, {}
    while "," in path:
        head, _, last = path.rpartition(",")
        m = _OPTION.match(last)
        if not m:
            break
        options[m.group(1)] = m.group(2)
        path = head
    on_bad_rows = _on_bad_rows(spec, options, known=("skip_bad_rows",))
    if not path:
        raise ValueError("movielens needs a path: movielens:PATH (or a name such as movielens:ml-latest-small)")
    if path in download.MOVIELENS_FILES and not Path(path).exists():
        path = str(download.download_movielens(path, download.data_dir()))
    return movielens.load(path, on_bad_rows=on_bad_rows)


def _files(spec: str, rest: str) -> Dataset:
    from distilrec.data import files

    options: dict[str, str] = {}
    for part in filter(None, rest.split(",")):
        m = _OPTION.match(part)
        if not m:
            raise ValueError(f"bad files option {part!r} in {spec!r}; expected key=value")
        options[m.group(1)] = m.group(2)
    on_bad_rows = _on_bad_rows(spec, options, known=("interactions", "items", "skip_bad_rows"))
    if not options.get("interactions"):
        raise ValueError(f"{spec!r} needs an interactions file: files:interactions=PATH[,items=PATH]")
    return files.load(options["interactions"], options.get("items") or None, on_bad_rows=on_bad_rows)


def _on_bad_rows(spec: str, options: dict[str, str], known: tuple[str, ...]) -> OnBadRows:
    """Check the option names; return ``on_bad_rows`` from ``skip_bad_rows`` (default: error)."""
    for key in options:
        if key not in known:
            raise ValueError(f"unknown option {key!r} in {spec!r}; known: {', '.join(known)}")
    flag = options.get("skip_bad_rows", "0").strip().lower()
    if flag not in _FLAGS:
        raise ValueError(f"skip_bad_rows={options['skip_bad_rows']!r} in {spec!r}: expected 1 or 0")
    return "skip" if _FLAGS[flag] else "error"
