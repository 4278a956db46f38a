"""A free-text query in a recommendation: the model's score blended with the query's text match.

The query and the items' text are embedded with the artifact's text encoder
(:class:`distilrec.text.TextEncoder`; item embeddings are ``Catalog.text_emb``, L2-normalised). Over a
pool of candidate items, the model's scores (or, for a user without history,
:func:`popularity_base` of the popularity counts) are min-max scaled to [0, 1] and mixed with the
cosine similarity of the query to each item's text::

    score = (1 - weight) * base01 + weight * cosine(query, item)

Numpy only (no torch, no Ray). Offline figures: ``docs/benchmarks.md``, "Free-text query".

>>> base = np.array([10.0, 0.0, 5.0])                  # the model's scores over three candidates
>>> sims = np.array([0.0, 0.9, 0.2])                   # cosine of the query to each item's text
>>> blend_query(base, sims, weight=0.5).round(3).tolist()
[0.5, 0.45, 0.35]
>>> query_text_from_attributes({"genres": ["Comedy", "Drama"], "tags": ["funny"]})
'Comedy Drama'
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

#: Default weight of the query's cosine similarity in :func:`blend_query`: an equal say for the
#: (rescaled) model score and the text match, as neither is known to matter more.
QUERY_WEIGHT: float = 0.5

#: Attribute values that stand for "no value" in the datasets' item text (MovieLens writes
#: ``(no genres listed)``); :func:`query_text_from_attributes` leaves them out.
NO_VALUE = frozenset({"(no genres listed)"})


def blend_query(base: np.ndarray, sims: np.ndarray, weight: float = QUERY_WEIGHT) -> np.ndarray:
    """Blend the model's scores with the query's cosine similarities over one candidate pool.

    ``base`` ``(M,)``: the model's scores for the pool's M items, on any scale (logits, or
    :func:`popularity_base` for a user without history). They are min-max scaled over the pool to
    [0, 1]; NaN and -inf count as the pool's minimum (0), +inf as its maximum (1); a pool whose finite
    scores are all equal (or that has none) scales to 0, so the query alone orders it.
    ``sims`` ``(M,)``: cosine similarities of the query to the items' text, in [-1, 1]
    (:func:`query_sims`). ``weight`` in [0, 1]: 0 keeps the model's order, 1 ranks by the text alone.

    Returns ``(1 - weight) * base01 + weight * sims``, ``(M,)`` float64 (higher is better).
    Raises ``ValueError`` for a weight outside [0, 1] (or NaN), or shapes that are not the same ``(M,)``.

    >>> blend_query(np.array([1.0, 1.0]), np.array([0.2, 0.4]), weight=0.25).tolist()   # constant pool
    [0.05, 0.1]
    >>> blend_query(np.array([np.nan, 2.0, 4.0]), np.zeros(3), weight=0.0).tolist()
    [0.0, 0.0, 1.0]
    """
    weight = float(weight)
    if not 0.0 <= weight <= 1.0:  # also refuses NaN
        raise ValueError(f"weight={weight!r}: the query's weight must be in [0, 1]")
    base = np.asarray(base, dtype=np.float64)
    sims = np.asarray(sims, dtype=np.float64)
    if base.ndim != 1 or base.shape != sims.shape:
        raise ValueError(f"blend_query needs base and sims of the same shape (M,): got {base.shape} and {sims.shape}")
    return (1.0 - weight) * minmax01(base) + weight * sims


def minmax01(x: np.ndarray) -> np.ndarray:
    """``x`` ``(M,)`` min-max scaled to [0, 1] over its finite values; NaN and -inf become 0, +inf 1;
    all finite values equal (or none finite): 0.

    >>> minmax01(np.array([2.0, 4.0, -np.inf, 3.0])).tolist()
    [0.0, 1.0, 0.0, 0.5]
    """
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    out = np.where(x == np.inf, 1.0, 0.0)
    if finite.any():
        lo, hi = x[finite].min(), x[finite].max()
        if hi > lo:
            out[finite] = (x[finite] - lo) / (hi - lo)
    return out


def popularity_base(popularity: np.ndarray) -> np.ndarray:
    """The base score of a user without history: ``log1p(counts)``, ``(N,)`` float64.

    ``popularity`` ``(N,)`` are interaction counts (``Catalog.popularity``). The logarithm keeps the
    few blockbusters from taking the whole [0, 1] range of the min-max scaling in
    :func:`blend_query`, so the query's match still counts among the moderately popular items; the
    order is the counts' order. Raises ``ValueError`` for negative or NaN counts.

    >>> popularity_base(np.array([0, 1, 99])).round(3).tolist()
    [0.0, 0.693, 4.605]
    """
    counts = np.asarray(popularity, dtype=np.float64)
    if np.isnan(counts).any() or (counts < 0).any():
        raise ValueError("popularity counts must be non-negative numbers")
    return np.log1p(counts)


def query_sims(query_vec: np.ndarray, item_emb: np.ndarray) -> np.ndarray:
    """Cosine similarity of one query embedding ``(d,)`` to each item's text embedding ``(N, d)``:
    ``(N,)`` float64 in [-1, 1].

    Both sides are L2-normalised here (the catalogue's rows already are; normalising again is cheap
    and safe). A zero vector, on either side, has similarity 0. Raises ``ValueError`` when the widths
    differ or the shapes are not ``(d,)`` and ``(N, d)``.

    >>> query_sims(np.array([2.0, 0.0]), np.array([[1.0, 0.0], [0.0, 3.0], [-1.0, 1.0]])).round(3).tolist()
    [1.0, 0.0, -0.707]
    """
    items = np.asarray(item_emb)
    if not np.issubdtype(items.dtype, np.floating):
        items = items.astype(np.float64)
    q = np.asarray(query_vec, dtype=np.float64)
    if q.ndim != 1 or items.ndim != 2 or items.shape[1] != q.shape[0]:
        raise ValueError(f"query_sims needs a query (d,) and items (N, d): got {q.shape} and {items.shape}")
    qn = np.linalg.norm(q)
    if qn == 0:
        return np.zeros(len(items))
    # in the items' own dtype (float32 in the catalogue): no float64 copy of the (N, d) matrix per query
    dots = (items @ (q / qn).astype(items.dtype)).astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", items, items)).astype(np.float64)
    return np.clip(dots / np.where(norms > 0, norms, 1.0), -1.0, 1.0)


def query_text_from_attributes(attrs: Mapping[str, Sequence[str]], names: Sequence[str] = ("genres",)) -> str:
    """A query text from an item's attributes (:func:`distilrec.catalog.parse_attributes`): the
    values of the attributes in ``names`` joined by spaces, e.g. ``"Comedy Drama"``. Placeholder
    values (:data:`NO_VALUE`) are left out; an item without any gives ``""``.

    >>> query_text_from_attributes({"genres": ["(no genres listed)"]})
    ''
    """
    values = [v.strip() for name in names for v in attrs.get(name, ())]
    return " ".join(v for v in values if v and v.lower() not in NO_VALUE)
