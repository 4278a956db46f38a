"""Full-ranking NDCG@k and HR@k with the user's history removed (``docs/evaluation.md``).

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
    """0-based rank of each target among the items outside its user's history. ``scores (B, N)``.

    The scores are read, never copied: the items ahead of the target are counted over the whole row,
    then those in the history (less the target) are taken off, so a chunk costs a few ``(B, N)``
    boolean arrays beside its scores."""
    s = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(len(targets))
    t = s[rows, targets][:, None]
    before = np.arange(s.shape[1])[None, :] < targets[:, None]
    ahead = s > t
    ahead |= (s == t) & before
    ranks = ahead.sum(1)
    for i, h in enumerate(histories):
        h = np.unique(np.asarray(h, dtype=np.int64))
        ranks[i] -= ahead[i, h[h != targets[i]]].sum()
    return ranks


def user_ndcg(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Each user's NDCG@k: 1/log2(rank+2) when the target ranks inside the top k, else 0."""
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def ndcg_hr(ranks: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Mean NDCG@k (:func:`user_ndcg`) and HR@k over users."""
    return float(user_ndcg(ranks, k).mean()), float((np.asarray(ranks) < k).mean())


def target_ranks(
    score_fn: Callable[..., np.ndarray],
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    batch_size: int = 256,
    times: Sequence[np.ndarray] | None = None,
    chunk_scores: int = 1 << 24,
) -> np.ndarray:
    """Score users in chunks with ``score_fn(histories) -> (B, N)`` (``score_fn(histories, times)``
    when ``times`` aligned with the histories are given); return each user's :func:`rank_of_targets`.

    A chunk holds at most ``batch_size`` users and at most ``chunk_scores`` scores (the first chunk,
    one user, tells the catalogue's size), so memory stays bounded whatever the catalogue: about
    ``chunk_scores × (4 + 3)`` bytes of scores and masks, 117 MiB by default."""
    ranks, start, size = [], 0, 1
    while start < len(histories):
        h = list(histories[start:start + size])
        scores = score_fn(h) if times is None else score_fn(h, list(times[start:start + size]))
        ranks.append(rank_of_targets(scores, h, targets[start:start + size]))
        start += size
        size = max(1, min(batch_size, chunk_scores // max(1, np.shape(scores)[1])))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def evaluate_ranks(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """``{"ndcg@k", "hr@k"}`` of the users' target ranks."""
    ndcg, hr = ndcg_hr(ranks, k)
    return {f"ndcg@{k}": ndcg, f"hr@{k}": hr}


def evaluate_scores(
    score_fn: Callable[..., np.ndarray],
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    k: int = 10,
    batch_size: int = 256,
    times: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """NDCG@k and HR@k of ``score_fn`` (:func:`target_ranks`, then :func:`evaluate_ranks`)."""
    return evaluate_ranks(target_ranks(score_fn, histories, targets, batch_size, times), k)


def paired_ratio(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int = 10, resamples: int = 2000,
                 seed: int = 0, level: float = 0.95) -> dict:
    """Model a's NDCG@k over model b's on the same users, with a paired bootstrap interval.

    Each resample draws the users with replacement and takes the same users for both models, so the
    interval reflects how the two models differ user by user; it is much narrower than two separate
    intervals would suggest (one NDCG@10 figure over 610 users carries a standard error of about
    0.005, ``docs/evaluation.md``). Returns ``{"ratio", "low", "high", "level", "users", "resamples"}``;
    the bounds are the percentile interval, ``None`` where model b scores zero in over 1 % of the
    resamples (a test set of a handful of users). A ratio whose ``low`` bound is above a target clears
    it beyond the test set's noise.

    >>> b = np.array([0, 3, 0, 1, 5, 2])          # model b's rank of each user's target
    >>> paired_ratio(b, b)["ratio"], paired_ratio(b, b)["low"]   # the same model: exactly 1
    (1.0, 1.0)
    >>> out = paired_ratio(np.zeros(6, int), b)   # model a ranks every target first
    >>> out["ratio"], out["low"] > 1.0
    (1.5315, True)
    """
    a_gain, b_gain = user_ndcg(ranks_a, k), user_ndcg(ranks_b, k)
    if a_gain.shape != b_gain.shape or a_gain.ndim != 1 or not len(a_gain):
        raise ValueError(f"paired_ratio needs the ranks of the same users: got shapes {a_gain.shape} and "
                         f"{b_gain.shape}")
    n = len(a_gain)
    ratio = float(a_gain.mean() / b_gain.mean()) if b_gain.mean() > 0 else None
    rng = np.random.default_rng(seed)
    ratios = []
    for start in range(0, resamples, 100):  # 100 resamples at a time bounds the memory on large test sets
        idx = rng.integers(0, n, size=(min(100, resamples - start), n))
        num, den = a_gain[idx].sum(1), b_gain[idx].sum(1)
        ratios.append(np.divide(num, den, out=np.full(len(num), np.nan), where=den > 0))
    ratios = np.concatenate(ratios)
    tail = (1 - level) / 2 * 100
    undefined = np.isnan(ratios).mean()  # model b scored nothing in these resamples (tiny test sets only)
    low, high = (None, None) if undefined > 0.01 else np.nanpercentile(ratios, [tail, 100 - tail])
    return {"ratio": None if ratio is None else round(ratio, 4),
            "low": None if low is None else round(float(low), 4),
            "high": None if high is None else round(float(high), 4),
            "level": level, "users": n, "resamples": resamples}


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
