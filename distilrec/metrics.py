"""Full-ranking NDCG@k and HR@k with the user's history removed (``EVALUATION.md``).

Ranks follow a stable sort by descending score: among equal scores the lower item row ranks first.

>>> import numpy as np
>>> scores = np.array([[0.1, 0.9, 0.5, 0.7]])
>>> rank_of_targets(scores, histories=[[1]], targets=np.array([2]))
array([1])
>>> round(ndcg_hr(np.array([1]), k=10)[0], 4)
0.6309
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


def rank_of_targets(scores: np.ndarray, histories: Sequence[Sequence[int]], targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among the items outside its user's history. ``scores (B, N)``."""
    s = np.array(scores, dtype=np.float64, copy=True)
    for i, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)
        s[i, h[h != targets[i]]] = -np.inf
    rows = np.arange(len(targets))
    t = s[rows, targets][:, None]
    n = s.shape[1]
    before = np.arange(n)[None, :] < targets[:, None]
    return ((s > t) | ((s == t) & before)).sum(1)


def ndcg_hr(ranks: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Mean NDCG@k (1/log2(rank+2) inside the top k) and HR@k over users."""
    ranks = np.asarray(ranks)
    hit = ranks < k
    ndcg = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(ndcg.mean()), float(hit.mean())


def evaluate_scores(
    score_fn: Callable[..., np.ndarray],
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    k: int = 10,
    batch_size: int = 256,
    times: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """Score users in batches with ``score_fn(histories) -> (B, N)`` (``score_fn(histories, times)``
    when ``times`` aligned with the histories are given) and return NDCG@k and HR@k."""
    ranks = []
    for start in range(0, len(histories), batch_size):
        h = list(histories[start:start + batch_size])
        scores = score_fn(h) if times is None else score_fn(h, list(times[start:start + batch_size]))
        ranks.append(rank_of_targets(scores, h, targets[start:start + batch_size]))
    ndcg, hr = ndcg_hr(np.concatenate(ranks), k)
    return {f"ndcg@{k}": ndcg, f"hr@{k}": hr}


def model_score_fn(model: torch.nn.Module) -> Callable[..., np.ndarray]:
    """Adapt a :mod:`distilrec.models` model to ``score_fn(histories, times=None)`` (eval mode, no grad)."""
    from distilrec.models import pad_histories

    def fn(histories: list[np.ndarray], times: list[np.ndarray] | None = None) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            hist = pad_histories(histories, model.cfg.n_items, model.cfg.max_len).to(device)
            t = pad_histories(times, 0, model.cfg.max_len).to(device) if times is not None else None
            return model.score(hist, times=t).float().cpu().numpy()

    return fn
