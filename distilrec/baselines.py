"""The baselines every report carries: Popularity and EASE (Steck, WWW 2019).

>>> import numpy as np
>>> pop = Popularity.fit([np.array([0, 1]), np.array([1])], n_items=3)
>>> pop.score([np.array([2])]).tolist()
[[1.0, 2.0, 0.0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

EASE_LAMBDAS = (10.0, 50.0, 200.0, 500.0)


def interaction_matrix(histories: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary user × item matrix ``(U, N)`` from item-row histories."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if histories else np.zeros(0, int)
    m = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(histories), n_items))
    m.data[:] = 1.0  # duplicates count once
    return m


@dataclass
class Popularity:
    """Items ranked by their number of interactions in the histories it was fitted on."""

    counts: np.ndarray

    @classmethod
    def fit(cls, histories: Sequence[np.ndarray], n_items: int) -> "Popularity":
        counts = np.bincount(np.concatenate(histories).astype(np.int64), minlength=n_items)
        return cls(counts.astype(np.float32))

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), len(self.counts)))


class CatalogueTooLarge(ValueError):
    """EASE was asked to fit a catalogue above its configured item limit (its ``(N, N)`` matrices)."""


def ease_bytes(n_items: int) -> int:
    """Peak memory of :meth:`EASE.fit` for ``n_items``: about four ``(N, N)`` float64 matrices at once."""
    return 4 * 8 * n_items * n_items


@dataclass
class EASE:
    """``B = -P / diag(P)`` with ``P = (XᵀX + λI)⁻¹`` and a zero diagonal; scores are ``x_u B``."""

    weights: np.ndarray  # (N, N)
    lam: float

    @classmethod
    def fit(cls, histories: Sequence[np.ndarray], n_items: int, lam: float, max_items: int | None = None) -> "EASE":
        """Fit on ``histories``; :class:`CatalogueTooLarge` when ``n_items > max_items`` (None: no limit)."""
        if max_items is not None and n_items > max_items:
            raise CatalogueTooLarge(
                f"EASE refused: {n_items:,} items is above its limit of {max_items:,} (ease_max_items); its "
                f"items × items matrices would take about {ease_bytes(n_items) / 2 ** 30:,.1f} GiB")
        x = interaction_matrix(histories, n_items)
        g = torch.from_numpy((x.T @ x).toarray().astype(np.float64))
        g.diagonal().add_(lam)
        # XᵀX + λI is symmetric positive definite: a Cholesky inverse is about twice as fast as inv().
        p = torch.cholesky_inverse(torch.linalg.cholesky(g))
        b = p / (-p.diagonal())[None, :]
        b.diagonal().zero_()
        return cls(b.float().numpy(), lam)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        x = interaction_matrix(histories, self.weights.shape[0])
        return np.asarray(x @ self.weights)
