"""Ranking after scoring: drop seen and excluded items, keep the top k, and the popularity fallback.

Pure functions over item rows, used by the Ranker deployment.

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
