"""The serving view of the catalogue: titles, attributes, text embeddings, popularity and a small
co-occurrence item graph, for the trained items and for the items added at serving time. No Ray.

Attributes come from the item text that every dataset loader writes
(``"{title}. genres: a, b. tags: x, y"``) or from the artifact's ``attributes`` column:

>>> parse_attributes("Heat (1995)", "Heat (1995). genres: Action, Crime. tags: heist")
{'genres': ['Action', 'Crime'], 'tags': ['heist']}
>>> g = ItemGraph.from_histories([[0, 1, 2], [0, 1]], n_items=3, window=1)
>>> g.weight(0, 1), g.weight(1, 0), g.weight(0, 2)
(2.0, 2.0, 0.0)
"""

from __future__ import annotations

import re
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


class ItemGraph:
    """Co-occurrence of items in users' histories: two items are linked by how often they appear
    within ``window`` positions of each other; each item keeps its ``top`` strongest neighbours."""

    def __init__(self, neighbours: list[dict[int, float]]):
        self.neighbours = neighbours

    @classmethod
    def from_histories(cls, histories: Iterable[Sequence[int]], n_items: int, window: int = 3,
                       top: int = 20) -> "ItemGraph":
        rows, cols = [], []
        for h in histories:
            h = np.asarray(h, dtype=np.int64)
            for d in range(1, window + 1):
                if len(h) > d:
                    rows.append(h[:-d])
                    cols.append(h[d:])
        if rows:
            r, c = np.concatenate(rows), np.concatenate(cols)
            keep = r != c
            r, c = r[keep], c[keep]
            m = sparse.coo_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n_items, n_items)).tocsr()
            m = (m + m.T).tocsr()
        else:
            m = sparse.csr_matrix((n_items, n_items), dtype=np.float32)
        neighbours: list[dict[int, float]] = []
        for i in range(n_items):
            lo, hi = m.indptr[i], m.indptr[i + 1]
            idx, val = m.indices[lo:hi], m.data[lo:hi]
            if len(idx) > top:
                best = np.argpartition(-val, top)[:top]
                idx, val = idx[best], val[best]
            neighbours.append(dict(zip(idx.tolist(), val.astype(float).tolist())))
        return cls(neighbours)

    def weight(self, a: int, b: int) -> float:
        if a >= len(self.neighbours):
            return 0.0
        return float(self.neighbours[a].get(b, 0.0))

    def extend(self, n: int) -> None:
        """Make room for new items (they have no co-occurrence yet)."""
        while len(self.neighbours) < n:
            self.neighbours.append({})


class Catalog:
    """Rows ``0 .. n_trained-1`` are the artifact's items (the model's rows); new items follow.

    ``text_emb`` ``(N, text_dim)`` is L2-normalised (cosine similarity for diversity)."""

    def __init__(self, item_ids: list[str], titles: list[str], attributes: list[dict[str, list[str]]],
                 text_emb: np.ndarray, histories: Iterable[Sequence[int]]):
        self.item_ids = list(item_ids)
        self.titles = list(titles)
        self.attributes = [dict(a) for a in attributes]
        self.values = [attribute_values(a) for a in self.attributes]  # what the explanations compare
        self.n_trained = len(self.item_ids)
        self.index = {it: i for i, it in enumerate(self.item_ids)}
        self.text_emb = _normalise(np.asarray(text_emb, dtype=np.float32))
        histories = [list(h) for h in histories]
        self.popularity = np.bincount(np.concatenate([np.asarray(h, np.int64) for h in histories])
                                      if histories else np.zeros(0, np.int64),
                                      minlength=self.n_trained).astype(np.float64)
        self.graph = ItemGraph.from_histories(histories, self.n_trained)

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
            self.attributes.append(dict(attributes))
            self.values.append(attribute_values(attributes))
            self.text_emb = np.concatenate([self.text_emb, emb])
            self.popularity = np.append(self.popularity, 0.0)
            self.index[item_id] = row
            self.graph.extend(len(self.item_ids))
        else:
            self.titles[row], self.attributes[row] = title, dict(attributes)
            self.values[row] = attribute_values(attributes)
            self.text_emb[row] = emb[0]
        return row

    def rows(self, item_ids: Iterable[str]) -> list[int]:
        """Rows of the known ids (unknown ones are left out)."""
        return [self.index[i] for i in item_ids if i in self.index]


def _normalise(x: np.ndarray) -> np.ndarray:
    if x.size == 0:
        return x
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
