"""The serving view of the catalogue: titles, attributes, text embeddings, popularity and a small
co-occurrence item graph, for the trained items and for the items added at serving time. No Ray.

Attributes come from the item text that every dataset loader writes
(``"{title}. genres: a, b. tags: x, y"``) or from the artifact's ``attributes`` column:

>>> parse_attributes("Heat (1995)", "Heat (1995). genres: Action, Crime. tags: heist")
{'genres': ['Action', 'Crime'], 'tags': ['heist']}
>>> g = ItemGraph.from_histories([[0, 1, 2], [0, 1]], n_items=3, window=1)
>>> g.weight(0, 1), g.weight(1, 0), g.weight(0, 2)
(2.0, 2.0, 0.0)

At a million items the catalogue is arrays, not a Python object per item: titles in one buffer,
attribute dicts shared by the items that have the same, the graph as compressed rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import sparse

from distilrec.ranking import attribute_values

_ATTR = re.compile(r"\.\s+([A-Za-z_][\w ]{0,40}?):\s+")


def parse_attributes(title: str, text: str) -> dict[str, list[str]]:
    """``{"genres": [...], "tags": [...]}`` from an item text ``"title. name: a, b. name: c"``."""
    rest = text[len(title):] if text.startswith(title) else text
    parts = _ATTR.split(rest)
    out: dict[str, list[str]] = {}
    # parts = [before, name1, values1, name2, values2, ...]
    for name, values in zip(parts[1::2], parts[2::2]):
        vals = [v.strip() for v in values.rstrip(". ").split(",") if v.strip()]
        if vals:
            out.setdefault(name.strip().lower(), []).extend(vals)
    return out


def compose_text(title: str, text: str | None, attributes: Mapping[str, Sequence[str]]) -> str:
    """The text the encoder reads for an item, in the loaders' form: ``"{title or text}. name: a, b"``.

    >>> compose_text("Heat", None, {"genres": ["Action", "Crime"]})
    'Heat. genres: Action, Crime'
    """
    out = (text or title).strip()
    for name, values in attributes.items():
        if values:
            out += f". {name}: " + ", ".join(values)
    return out


@dataclass(frozen=True)
class HistoryLog:
    """Every user's history as catalogue rows in one array: user ``u``'s rows, oldest first, are
    ``rows[starts[u]:starts[u + 1]]`` (``rows`` int32 ``(M,)``, ``starts`` int64 ``(U + 1,)``; 4 bytes an
    interaction, no Python object per row).

    >>> log = HistoryLog.from_lists([[0, 1], [2]])
    >>> log.rows.tolist(), log.starts.tolist(), log.user(1).tolist()
    ([0, 1, 2], [0, 2, 3], [2])
    """

    rows: np.ndarray
    starts: np.ndarray

    @classmethod
    def from_lists(cls, histories: Iterable[Sequence[int]]) -> "HistoryLog":
        parts = [np.asarray(h, dtype=np.int32) for h in histories]
        starts = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(h) for h in parts], out=starts[1:])
        return cls(np.concatenate(parts) if parts else np.zeros(0, np.int32), starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def user(self, u: int) -> np.ndarray:
        return self.rows[self.starts[u]:self.starts[u + 1]]


class ItemGraph:
    """Co-occurrence of items in users' histories: two items are linked by how often they appear
    within ``window`` positions of each other; each item keeps its ``top`` strongest neighbours (ties:
    the lower row). Held as compressed rows: item ``r``'s neighbours are
    ``indices[indptr[r]:indptr[r + 1]]`` (int32) with ``weights`` (float32) beside them."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray):
        self.indptr, self.indices, self.weights = indptr, indices, weights

    @classmethod
    def from_histories(cls, histories: Iterable[Sequence[int]] | HistoryLog, n_items: int, window: int = 3,
                       top: int = 20) -> "ItemGraph":
        log = histories if isinstance(histories, HistoryLog) else HistoryLog.from_lists(histories)
        rows, lengths = log.rows, np.diff(log.starts)
        user = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)  # the user of each position
        src, dst = [], []
        for d in range(1, window + 1):
            if len(rows) > d:
                same = (user[:-d] == user[d:]) & (rows[:-d] != rows[d:])
                src.append(rows[:-d][same])
                dst.append(rows[d:][same])
        del user
        if src:
            r, c = np.concatenate(src + dst), np.concatenate(dst + src)  # both directions
            del src, dst
            m = sparse.coo_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n_items, n_items)).tocsr()
            del r, c
        else:
            m = sparse.csr_matrix((n_items, n_items), dtype=np.float32)
        m.sum_duplicates()
        # Keep each row's `top` strongest: order every entry by (row, -weight, column), keep the first `top`.
        row_of = np.repeat(np.arange(n_items, dtype=np.int32), np.diff(m.indptr))
        order = np.lexsort((m.indices, -m.data, row_of))
        rank = np.arange(len(order)) - m.indptr[row_of[order]]
        keep = order[rank < top]
        keep.sort()  # back into row order (then column order within a row)
        counts = np.bincount(row_of[keep], minlength=n_items)
        indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, m.indices[keep].astype(np.int32), m.data[keep].astype(np.float32))

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, r: int) -> tuple[list[int], list[float]]:
        """Item ``r``'s neighbours and their weights, as lists (empty for a row the graph lacks)."""
        if r >= len(self.indptr) - 1:
            return [], []
        lo, hi = self.indptr[r], self.indptr[r + 1]
        return self.indices[lo:hi].tolist(), self.weights[lo:hi].tolist()

    @property
    def neighbours(self) -> "_Neighbours":
        """``graph.neighbours[r]``: item ``r``'s neighbours as a ``{row: weight}`` dict."""
        return _Neighbours(self)

    def weight(self, a: int, b: int) -> float:
        idx, w = self.row(a)
        return float(w[idx.index(b)]) if b in idx else 0.0

    def extend(self, n: int) -> None:
        """Make room for new items (they have no co-occurrence yet)."""
        if n > len(self):
            self.indptr = np.concatenate([self.indptr, np.full(n - len(self), self.indptr[-1], dtype=np.int64)])


class _Neighbours:
    def __init__(self, graph: ItemGraph):
        self.graph = graph

    def __len__(self) -> int:
        return len(self.graph)

    def __getitem__(self, r: int) -> dict[int, float]:
        return dict(zip(*self.graph.row(r)))


class StringColumn(Sequence[str]):
    """Strings held as one UTF-8 buffer and an offset per string (no Python object per row until one is
    read); strings appended later are kept as they are and may be replaced.

    >>> c = StringColumn(["Heat", "Alien"]); c.append("Up"); c[2] = "Up!"
    >>> c[1], c[2], len(c), list(c)
    ('Alien', 'Up!', 3, ['Heat', 'Alien', 'Up!'])
    """

    def __init__(self, values: Iterable[str]):
        encoded = [v.encode() for v in values]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._data = b"".join(encoded)
        self._n = len(encoded)
        self._more: list[str] = []

    def __len__(self) -> int:
        return self._n + len(self._more)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if i < 0:
            i += len(self)
        if 0 <= i < self._n:
            return self._data[self._offsets[i]:self._offsets[i + 1]].decode()
        return self._more[i - self._n]

    def __setitem__(self, i: int, value: str) -> None:
        if i < 0:
            i += len(self)
        if i < self._n:
            raise IndexError("the strings of the first rows are read-only")
        self._more[i - self._n] = value

    def append(self, value: str) -> None:
        self._more.append(value)


def _attributes_key(attributes: Mapping[str, Sequence[str]]) -> tuple:
    return tuple((k, tuple(v)) for k, v in attributes.items())


class Catalog:
    """Rows ``0 .. n_trained-1`` are the artifact's items (the model's rows); new items follow.

    ``text_emb`` ``(N, text_dim)`` is L2-normalised (cosine similarity for diversity). Titles are a
    :class:`StringColumn`; items with equal attributes share one dict and one :func:`attribute_values`
    set (``attributes[r]``, ``values[r]``: lists of references; never change one in place); the
    co-occurrence graph is compressed rows. ``histories``: each user's rows, as lists or a
    :class:`HistoryLog`."""

    def __init__(self, item_ids: list[str], titles: Sequence[str], attributes: Sequence[Mapping[str, list[str]]],
                 text_emb: np.ndarray, histories: Iterable[Sequence[int]] | HistoryLog):
        self.item_ids = list(item_ids)
        self.titles = StringColumn(titles)
        self._shared: dict[tuple, tuple[dict, frozenset]] = {}
        self.attributes: list[dict[str, list[str]]] = []
        self.values: list[frozenset] = []  # what the explanations compare
        for a in attributes:
            self._append_attributes(a)
        self.n_trained = len(self.item_ids)
        self.index = {it: i for i, it in enumerate(self.item_ids)}
        self.text_emb = _normalise(np.asarray(text_emb, dtype=np.float32))
        log = histories if isinstance(histories, HistoryLog) else HistoryLog.from_lists(histories)
        self.popularity = np.bincount(log.rows, minlength=self.n_trained).astype(np.float64)
        self.graph = ItemGraph.from_histories(log, self.n_trained)

    def _attributes(self, attributes: Mapping[str, list[str]]) -> tuple[dict, frozenset]:
        key = _attributes_key(attributes)
        shared = self._shared.get(key)
        if shared is None:
            a = {k: list(v) for k, v in attributes.items()}
            shared = self._shared[key] = (a, attribute_values(a))
        return shared

    def _append_attributes(self, attributes: Mapping[str, list[str]]) -> None:
        a, v = self._attributes(attributes)
        self.attributes.append(a)
        self.values.append(v)

    def attribute_names(self) -> set[str]:
        """Every attribute name of the catalogue (``genres``, ``tags``, …)."""
        return {n for a, _ in self._shared.values() for n in a}

    def __len__(self) -> int:
        return len(self.item_ids)

    def add(self, item_id: str, title: str, attributes: dict[str, list[str]], text_emb: np.ndarray) -> int | None:
        """Add (or replace) a new item; returns its row, or ``None`` for a trained id (kept as trained)
        or an embedding of the wrong width."""
        row = self.index.get(item_id)
        if row is not None and row < self.n_trained:
            return None
        emb = _normalise(np.asarray(text_emb, dtype=np.float32).reshape(1, -1))
        if emb.shape[1] != self.text_emb.shape[1]:
            return None
        if row is None:
            row = len(self.item_ids)
            self.item_ids.append(item_id)
            self.titles.append(title)
            self._append_attributes(attributes)
            self.text_emb = np.concatenate([self.text_emb, emb])
            self.popularity = np.append(self.popularity, 0.0)
            self.index[item_id] = row
            self.graph.extend(len(self.item_ids))
        else:
            self.titles[row] = title
            self.attributes[row], self.values[row] = self._attributes(attributes)
            self.text_emb[row] = emb[0]
        return row

    def rows(self, item_ids: Iterable[str]) -> list[int]:
        """Rows of the known ids (unknown ones are left out)."""
        return [self.index[i] for i in item_ids if i in self.index]


def _normalise(x: np.ndarray) -> np.ndarray:
    if x.size == 0:
        return x
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
