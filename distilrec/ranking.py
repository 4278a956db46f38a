"""Ranking after scoring: drop seen and excluded items, keep the top k, and the popularity fallback.

Pure functions over item rows, called by the ingress (:mod:`distilrec.serving`).

>>> rank_candidates([3, 1, 2, 0], [0.9, 0.8, 0.7, 0.1], drop={1}, k=2)
[(3, 0.9), (2, 0.7)]
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def rank_candidates(rows: Sequence[int], scores: Sequence[float], drop: Iterable[int], k: int) -> list[tuple[int, float]]:
    """The first ``k`` candidates (already in descending score order) whose row is not in ``drop``."""
    drop = set(drop)
    out = []
    for r, s in zip(rows, scores):
        if r not in drop:
            out.append((int(r), float(s)))
            if len(out) == k:
                break
    return out


def popularity_counts(histories: Iterable[Sequence[int]], n_items: int) -> np.ndarray:
    """Interaction count per item row ``(N,)``."""
    rows = [np.asarray(h, dtype=np.int64) for h in histories]
    return np.bincount(np.concatenate(rows) if rows else np.zeros(0, np.int64), minlength=n_items).astype(np.float64)


def most_popular(counts: np.ndarray, drop: Iterable[int], k: int) -> list[tuple[int, float]]:
    """Top-``k`` rows by count (ties: lower row first), skipping ``drop``; scores are shares of all
    interactions, so they read as a probability."""
    drop = set(drop)
    top = np.argsort(-counts, kind="stable")[: k + len(drop)]
    total = max(float(counts.sum()), 1.0)
    return rank_candidates(top.tolist(), (counts[top] / total).tolist(), drop, k)


# ------------------------------------------------------------------------- filters, diversity, why

def passes(attributes: dict[str, list[str]], filters: dict[str, list[str]] | None) -> bool:
    """True when, for every filtered attribute, the item has at least one of the wanted values
    (case-insensitive): ``{"genres": ["Comedy", "Drama"]}`` keeps comedies and dramas.

    >>> passes({"genres": ["Comedy"]}, {"genres": ["comedy", "Drama"]}), passes({}, {"genres": ["Comedy"]})
    (True, False)
    """
    if not filters:
        return True
    for name, wanted in filters.items():
        have = {v.lower() for v in attributes.get(name, ())}
        if not have & {w.lower() for w in wanted}:
            return False
    return True


def mmr(candidates: Sequence[tuple[int, float]], vectors: np.ndarray, k: int, diversity: float) -> list[tuple[int, float]]:
    """Maximal marginal relevance: pick ``k`` of ``candidates`` (descending score) one at a time by
    ``(1 - diversity) * relevance - diversity * max cosine similarity to those already picked``;
    relevance is the score min-max scaled to [0, 1]. ``vectors`` ``(N, d)`` are L2-normalised rows.
    ``diversity = 0`` keeps the order. Scores in the output are the model's, unchanged.

    >>> v = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    >>> [r for r, _ in mmr([(0, 3.0), (1, 2.9), (2, 1.0)], v, 2, 0.0)]
    [0, 1]
    >>> [r for r, _ in mmr([(0, 3.0), (1, 2.9), (2, 1.0)], v, 2, 0.7)]
    [0, 2]
    """
    cands = list(candidates)
    if diversity <= 0 or len(cands) <= 1:
        return cands[:k]
    scores = np.array([s for _, s in cands], dtype=np.float64)
    span = scores.max() - scores.min()
    rel = (scores - scores.min()) / span if span > 0 else np.ones_like(scores)
    vecs = vectors[[r for r, _ in cands]].astype(np.float64)
    max_sim = np.full(len(cands), -np.inf)
    picked: list[int] = []
    free = np.ones(len(cands), dtype=bool)
    for _ in range(min(k, len(cands))):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = (1 - diversity) * rel - diversity * penalty
        value[~free] = -np.inf
        j = int(np.argmax(value))
        picked.append(j)
        free[j] = False
        max_sim = np.maximum(max_sim, vecs @ vecs[j])
    return [cands[j] for j in picked]


def attribute_values(attributes: dict[str, list[str]]) -> frozenset[tuple[str, str]]:
    """An item's ``(attribute, value lower-cased)`` pairs, what :class:`Explainer` compares."""
    return frozenset((k, v.lower()) for k, vs in attributes.items() for v in vs)


class Explainer:
    """Why each item is recommended to a user with ``history`` (rows, oldest first): the history item it
    is most often watched with (co-occurrence; ties: the most recent), else the most recent one that
    shares the most attribute values with it, else a generic reason. The user's recent history
    (``recent`` items, most recent first, unique) is prepared once for all the items of an answer.
    ``values``: each row's :func:`attribute_values`, precomputed (the catalogue keeps them), else
    computed here as needed."""

    def __init__(self, history: Sequence[int], graph, attributes: Sequence[dict[str, list[str]]],
                 titles: Sequence[str], recent: int = 50, values: Sequence[frozenset] | None = None):
        self.graph, self.attributes, self.titles = graph, attributes, titles
        self.hist = list(dict.fromkeys(reversed(list(history)[-recent:])))  # most recent first, unique
        self.pos = {h: i for i, h in enumerate(self.hist)}
        self.values = values
        self._hist_values: list[frozenset] | None = None  # the history's values, read at the first need

    def _values(self, row: int) -> frozenset:
        return self.values[row] if self.values is not None else attribute_values(self.attributes[row])

    def __call__(self, row: int) -> str:
        best, best_w, best_pos = None, 0.0, len(self.hist)
        # at most the graph's top neighbours, fewer than the history
        for h, w in zip(*self.graph.row(row)):
            pos = self.pos.get(h)
            if pos is not None and (w > best_w or (w == best_w and w > 0 and pos < best_pos)):
                best, best_w, best_pos = h, w, pos
        if best is not None:
            return f"because you watched {self.titles[best]} (often watched together)"
        mine = self._values(row)
        best, shared = None, frozenset()
        if mine:
            if self._hist_values is None:
                self._hist_values = [self._values(h) for h in self.hist]
            for h, theirs in zip(self.hist, self._hist_values):
                common = mine & theirs
                if len(common) > len(shared):
                    best, shared = h, common
        if best is not None:
            names: dict[str, list[str]] = {}
            for k, v in sorted(shared):
                names.setdefault(k, []).append(v)
            what = "; ".join(f"{k}: {', '.join(vs)}" for k, vs in names.items())
            return f"because you watched {self.titles[best]} (shared {what})"
        return "recommended from your history" if self.hist else "popular with everyone"


def explain(row: int, history: Sequence[int], graph, attributes: Sequence[dict[str, list[str]]],
            titles: Sequence[str], recent: int = 50) -> str:
    """One item's reason (see :class:`Explainer`, which prepares the history once for many items)."""
    return Explainer(history, graph, attributes, titles, recent)(row)


def cooccurrence_ranking(history: Sequence[int], graph, popularity: np.ndarray, drop: Iterable[int],
                         k: int, keep=None, recent: int = 50) -> list[tuple[int, float]]:
    """The cheap fallback when the model cannot answer: items linked to the user's recent history in
    the co-occurrence graph (summed weights, recent items first), then popular items. ``keep(row)``
    filters rows."""
    drop = set(drop)
    score: dict[int, float] = {}
    for pos, h in enumerate(reversed(list(history)[-recent:])):
        decay = 1.0 / (1 + pos)
        for n, w in zip(*graph.row(h)):
            if n not in drop:
                score[n] = score.get(n, 0.0) + w * decay
    ranked = sorted(score.items(), key=lambda x: (-x[1], x[0]))
    out = [(int(r), float(s)) for r, s in ranked if keep is None or keep(r)][:k]
    if len(out) < k:
        taken = drop | {r for r, _ in out}
        total = max(float(popularity.sum()), 1.0)
        for r in np.argsort(-popularity, kind="stable").tolist():
            if r not in taken and (keep is None or keep(r)):
                out.append((int(r), float(popularity[r] / total)))
                if len(out) == k:
                    break
    return out
